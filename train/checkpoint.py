"""Checkpoints: accelerate `save_state` folders made atomic, pruned, and found again for resume.

A checkpoint is written into `.checkpoint-N.tmp` by every rank, completed with
`trainer_state.json` (which lists every file of the folder with its size) and the adapter in
export format (`adapter/<name>.safetensors`), then renamed to `checkpoint-N` by the main
process. A folder damaged later (a truncated or missing file) is found by `checkpoint_problem`
and skipped by `checkpoint.resume=auto`, which then takes the previous good one.
Only LoRA weights are saved (the frozen base is reloaded from its folder), which keeps a 14B
checkpoint at adapter size.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from core.run_folder import (  # noqa: F401  (re-exported: the folder layout lives in core, shared with infer)
    ADAPTER_DIR,
    STATE_FILE,
    checkpoint_folders,
    checkpoint_path,
    latest_checkpoint,
    list_checkpoints,
)


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under `folder` (relative path -> bytes): recorded at save time, compared at resume."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*")) if f.is_file()}


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (missing/truncated/unreadable file), or None."""
    from safetensors import safe_open

    try:
        state = read_state(checkpoint)
    except FileNotFoundError:
        return f"no {STATE_FILE} (half-written)"
    except (OSError, ValueError) as exc:
        return f"{STATE_FILE} is unreadable ({exc})"
    expected = state.get("files")
    if expected is None:  # written before file lists were recorded: check what every checkpoint holds
        ranks = range(int(state.get("world_size", 1)))
        expected = {f"trainer_rng_{rank}.safetensors": None for rank in ranks}
        expected.update({str(f.relative_to(checkpoint)): None for f in (checkpoint / ADAPTER_DIR).glob("*.safetensors")})
        if not any(name.startswith(ADAPTER_DIR + "/") for name in expected):
            return f"no {ADAPTER_DIR}/*.safetensors"
    for name, size in expected.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if size is not None and path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.keys()
            except Exception as exc:  # safetensors raises several types for damaged files
                return f"{name} is unreadable ({str(exc).splitlines()[0]})"
    return None


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
        state = {**state, "files": file_sizes(tmp)}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():  # the same step saved again (e.g. a resumed run): the new one wins
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resume_target(resume: str, root: Path, log: Callable[[str], Any] = print) -> Path | None:
    """`auto`: the latest checkpoint that passes `checkpoint_problem` (each damaged one is skipped with one
    line through `log`; None on a fresh run); `never`; or an explicit folder, which must be sound."""
    from core.config import ConfigError

    if resume == "never":
        return None
    if resume == "auto":
        for folder in reversed(checkpoint_folders(root)):
            problem = checkpoint_problem(folder)
            if problem is None:
                return folder
            log(f"skipping damaged checkpoint {folder}: {problem}")
        return None
    path = Path(resume).expanduser()
    problem = checkpoint_problem(path) if path.is_dir() else "no such folder"
    if problem is not None:
        raise ConfigError(f"checkpoint.resume='{resume}' cannot be resumed from: {problem}")
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
