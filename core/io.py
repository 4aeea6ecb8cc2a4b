"""Atomic file writes: a reader (or a run stopped mid-write) sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, payload: Any, **dumps_kwargs: Any) -> Path:
    """Write `payload` as indented JSON to a temporary file beside `path`, then rename it over `path`.

    `dumps_kwargs` go to `json.dumps` (e.g. `allow_nan=False` for reports, `default=str` for caches)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, **dumps_kwargs))
    tmp.replace(path)
    return path
