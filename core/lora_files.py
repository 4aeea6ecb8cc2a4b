"""The one LoRA loader: find a LoRA file and load it (or a weighted stack of them) as named adapters.

Training (stage 2's base LoRA, held-out evaluation) and inference (generate, the A/B) load
through here, so a file that works in one works in the other. Files in diffusers format and in
original Wan (ComfyUI) keys both load, the way diffusers' Wan pipelines load them.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from core.config import ConfigError
from core.run_folder import latest_checkpoint
from core.schema import LoraFile

COMFYUI_SUFFIX = "_comfyui"


def find_lora_file(path: str | Path) -> Path:
    """A LoRA file from a file, an export folder, a checkpoint folder or a run folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"LoRA '{p}' does not exist; pass a .safetensors file, a run folder or a checkpoint folder")
    for folder in (p, p / "adapter", p / "lora"):
        files = sorted(
            f
            for f in folder.glob("*.safetensors")
            if not f.stem.endswith(COMFYUI_SUFFIX) and not f.name.startswith("trainer_rng_")
        )  # checkpoint RNG
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise ConfigError(
                f"LoRA folder '{folder}' holds {len(files)} files ({', '.join(f.name for f in files)}); pass one file"
            )
    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return find_lora_file(latest)
    raise ConfigError(f"no LoRA file in '{p}' (looked in it, adapter/, lora/ and checkpoints/)")


def load_lora(transformer: Any, path: str | Path, name: str, pipeline: Any = None) -> Path:
    """Load a LoRA file (diffusers or original Wan keys) as the adapter `name`; returns the file.

    `pipeline`, when given, is the diffusers pipeline holding `transformer`: its CPU-offload
    hooks are then taken off and put back around the load, as `pipeline.load_lora_weights` does."""
    from diffusers import WanImageToVideoPipeline

    file = find_lora_file(path)
    state, metadata = WanImageToVideoPipeline.lora_state_dict(str(file), return_lora_metadata=True)
    with warnings.catch_warnings():  # "multiple adapters": stacking is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.load_lora_adapter(
            state, adapter_name=name, metadata=metadata, prefix="transformer", _pipeline=pipeline
        )
    return file


def apply_loras(target: Any, loras: list[LoraFile]) -> list[str]:
    """Load each LoRA of the stack as a named adapter and activate them all with their weights.

    `target`: a Wan pipeline (its transformer gets the adapters) or the transformer itself."""
    transformer = getattr(target, "transformer", target)
    pipeline = target if transformer is not target else None
    names: list[str] = []
    for i, lora in enumerate(loras):
        path = Path(lora.path).expanduser()
        if not path.exists():
            raise ConfigError(f"loras[{i}].path '{path}' does not exist; point it at a file from train.export")
        file = find_lora_file(path)
        name = lora.name or f"{file.stem}_{i}"
        load_lora(transformer, file, name, pipeline)
        names.append(name)
    if names:
        transformer.set_adapters(names, [lora.weight for lora in loras])
    return names
