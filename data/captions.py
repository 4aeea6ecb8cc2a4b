"""Captions for clips: a sidecar `.txt` next to the clip wins, then a metadata table; a trigger word is prepended.

A metadata table is `metadata.csv` (columns `file` or `file_name`, and `caption` or `text`) or
`metadata.jsonl` (one object per line with the same keys), with file names relative to the
input folder (or bare names). Those are the layouts of Hugging Face `videofolder` datasets.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from core.config import ConfigError

FILE_KEYS = ("file", "file_name", "path", "video")
CAPTION_KEYS = ("caption", "text", "prompt")
METADATA_NAMES = ("metadata.csv", "metadata.jsonl")


def _pick(row: dict, keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = row.get(key)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def load_metadata(path: Path) -> dict[str, str]:
    """{relative path or bare name: caption}; ConfigError if the table is unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"metadata file '{path}' is not readable UTF-8 text: {exc}") from exc
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ConfigError(f"metadata file '{path}' line {number} is not JSON: {exc.msg}") from exc
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    else:
        raise ConfigError(f"metadata file '{path}' must be .csv or .jsonl")
    table: dict[str, str] = {}
    for row in rows:
        name, caption = _pick(row, FILE_KEYS), _pick(row, CAPTION_KEYS)
        if name and caption:
            table[Path(name).as_posix()] = caption
    return table


def find_metadata(input_dir: Path, metadata_file: str | None) -> Path | None:
    if metadata_file is not None:
        path = Path(metadata_file).expanduser()
        if not path.is_absolute() and not path.exists():
            path = input_dir / path
        if not path.is_file():
            raise ConfigError(f"metadata_file '{metadata_file}' not found (looked in the working folder and input_dir)")
        return path
    for name in METADATA_NAMES:
        if (input_dir / name).is_file():
            return input_dir / name
    return None


def find_caption(video: Path, input_dir: Path, table: dict[str, str]) -> tuple[str | None, str]:
    """(caption or None, where it came from or why it is missing)."""
    sidecar = video.with_suffix(".txt")
    if sidecar.is_file():
        try:
            text = " ".join(sidecar.read_text(encoding="utf-8").split())
        except (OSError, UnicodeDecodeError):
            text = ""
        if text:
            return text, "sidecar"
        if video.relative_to(input_dir).as_posix() not in table and video.name not in table:
            return None, f"caption file {sidecar.name} is empty or unreadable"
    rel = video.relative_to(input_dir).as_posix()
    for key in (rel, video.name):
        if key in table:
            return table[key], "metadata"
    return None, f"no caption: no {sidecar.name} and no metadata entry"


def with_trigger(caption: str, trigger: str | None) -> str:
    """Prepend the trigger word once ("elturco style, a man walks")."""
    if not trigger or caption.lower().startswith(trigger.lower()):
        return caption
    return f"{trigger}, {caption}"
