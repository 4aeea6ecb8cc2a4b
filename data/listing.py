"""Which files under input_dir are clips, which are not, and why some are skipped: every input ends up
in the manifest, in rejects.jsonl or in notices.jsonl, none is dropped silently.

Symbolic links to folders are followed (each real folder once, so a link loop ends); a link whose
target is missing is rejected with its target named. Folders that data.prepare itself wrote (an
output folder placed inside the input folder, recognised by its prepare.json / prepare.yaml, or the
current output_dir) are skipped with a notice, so a rerun does not reject its own caches and reports.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from data.captions import METADATA_NAMES
from data.video import VIDEO_EXTENSIONS

CAPTION_SUFFIXES = (".txt",)
OUTPUT_MARKERS = ("prepare.json", "prepare.yaml")  # written by data.prepare into every output folder


@dataclass
class Listing:
    videos: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)  # not a video: reported as rejects
    broken: list[tuple[Path, str]] = field(default_factory=list)  # (path, reason): reported as rejects
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why): reported as notices


def is_prepare_output(folder: Path) -> bool:
    """A folder data.prepare wrote (it holds prepare.json or prepare.yaml)."""
    return any((folder / name).is_file() for name in OUTPUT_MARKERS)


def _walk(input_dir: Path, output_dir: Path | None, listing: Listing) -> list[Path]:
    """Every file path under input_dir (links to folders followed once per real folder)."""
    files: list[Path] = []
    seen: dict[str, Path] = {os.path.realpath(input_dir): input_dir}
    own = os.path.realpath(output_dir) if output_dir is not None else None
    stack = [input_dir]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            listing.broken.append((folder, f"folder cannot be listed: {exc.strerror or exc}"))
            continue
        for entry in entries:
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=True):
                real = os.path.realpath(path)
                if real == own or is_prepare_output(path):
                    listing.skipped.append((path, "an output folder of data.prepare (not input): skipped"))
                elif real in seen:
                    first = seen[real].relative_to(input_dir).as_posix() or "."
                    listing.skipped.append((path, f"the same folder as '{first}' (symbolic link): listed once"))
                else:
                    seen[real] = path
                    stack.append(path)
            elif entry.is_symlink() and not path.exists():
                listing.broken.append((path, f"broken symbolic link: its target '{os.readlink(path)}' does not exist"))
            elif entry.is_file(follow_symlinks=True):
                files.append(path)
            else:
                listing.broken.append((path, "not a regular file (socket, pipe or device)"))
    return files


def list_inputs(input_dir: Path, metadata: Path | None, output_dir: Path | None = None) -> Listing:
    """Video files, other files, broken entries and skipped folders under input_dir, sorted; caption
    sidecars and the metadata table are none of them. Hidden files (.DS_Store, editor swap files)
    count as other files: they are reported."""
    listing = Listing()
    for path in sorted(_walk(input_dir, output_dir, listing)):
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            listing.videos.append(path)
        elif suffix in CAPTION_SUFFIXES and any(os.path.lexists(path.with_suffix(e)) for e in VIDEO_EXTENSIONS):
            continue
        elif path == metadata or (path.parent == input_dir and path.name in METADATA_NAMES):
            continue
        else:
            listing.others.append(path)
    listing.broken.sort()
    listing.skipped.sort()
    return listing
