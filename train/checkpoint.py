"""Checkpoints: accelerate `save_state` folders made atomic, pruned, and found again for resume.

A checkpoint is written into `.checkpoint-N.tmp` by every rank, completed with
`trainer_state.json` and the adapter in export format (`adapter/<name>.safetensors`), then
renamed to `checkpoint-N` by the main process: a folder with that name is always complete.
Only LoRA weights are saved (the frozen base is reloaded from its folder), which keeps a 14B
checkpoint at adapter size.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
ADAPTER_DIR = "adapter"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_path(root: Path, step: int) -> Path:
    return root / f"checkpoint-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints (those holding trainer_state.json), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def read_state(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / STATE_FILE).read_text())


def save_checkpoint(accelerator: Accelerator, root: Path, step: int, state: dict[str, Any], keep_last: int,
                    **save_kwargs: Any) -> Path:
    """Every rank calls this; returns the final folder. Older checkpoints beyond `keep_last` are removed."""
    final = checkpoint_path(root, step)
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), **save_kwargs)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # the same step saved again (e.g. a resumed run): the new one wins
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_target(resume: str, root: Path) -> Path | None:
    """`auto`: latest complete checkpoint (None on a fresh run); `never`; or an explicit folder."""
    from core.config import ConfigError

    if resume == "never":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"checkpoint.resume='{resume}' is not a complete checkpoint folder (no {STATE_FILE})")
    return path


# DeepSpeed's own checkpoint files (ZeRO optimizer partitions) hold these three classes besides
# tensors; everything else is refused: resuming never unpickles arbitrary objects.
_DEEPSPEED_SAFE_GLOBALS = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


@contextlib.contextmanager
def deepspeed_weights_only() -> Iterator[None]:
    """Make DeepSpeed's checkpoint engine load with `torch.load(weights_only=True)` + an allowlist."""
    import importlib

    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = [getattr(importlib.import_module(module), name) for module, name in _DEEPSPEED_SAFE_GLOBALS]
    original = TorchCheckpointEngine.load

    def load(self: Any, path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    TorchCheckpointEngine.load = load
    try:
        yield
    finally:
        TorchCheckpointEngine.load = original
