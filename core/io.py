"""Atomic file writes: a reader (or a run stopped mid-write) sees the old file or the new one, never half.

Every writer goes through `atomic_path`: it hands out a temporary path beside the target (same
folder, so the final rename never crosses a file system; same suffix, so writers that pick a
format by extension still do), renames it over the target when the block succeeds and removes
it when the block raises. Text, bytes and JSON have one-call helpers on top.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for `path` (a file or a folder the block creates); on success it
    replaces `path`, on an exception it is removed and `path` stays as it was.

    A folder that already exists is moved aside first and deleted after the swap (a rename cannot
    replace a non-empty folder), so a reader sees the old folder or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    _remove(tmp)  # left by a killed run of the same pid
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and path.is_dir() and not path.is_symlink():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        _remove(old)
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.replace(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | Path, payload: Any, **dumps_kwargs: Any) -> Path:
    """`payload` as indented JSON; `dumps_kwargs` go to `json.dumps` (e.g. `allow_nan=False` for
    reports, `default=str` for caches). A payload that cannot be serialised leaves `path` untouched."""
    return write_text_atomic(path, json.dumps(payload, indent=2, **dumps_kwargs))
