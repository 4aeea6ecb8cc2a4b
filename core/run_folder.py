"""Where a training run keeps its checkpoints: written by train.checkpoint, read by every package
that looks for a run's LoRA (core.lora_files for inference, train.export).

    <run>/checkpoints/checkpoint-000012/trainer_state.json   complete once this file exists
    <run>/checkpoints/checkpoint-000012/adapter/<name>.safetensors
"""

from __future__ import annotations

import re
from pathlib import Path

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"checkpoint-{step:06d}"


def checkpoint_folders(root: Path) -> list[Path]:
    """Every `checkpoint-N` folder under `root`, complete or not, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if CHECKPOINT_NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (those holding trainer_state.json), oldest first."""
    return [p for p in checkpoint_folders(root) if (p / STATE_FILE).is_file()]


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None
