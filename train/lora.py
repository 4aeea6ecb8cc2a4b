"""LoRA on the frozen Wan transformer: which layers, which adapter trains, and the file format.

Files are always diffusers-format safetensors (`transformer.<layer>.lora_A.weight`) carrying
the peft `LoraConfig` as `lora_adapter_metadata`: without it diffusers falls back to
alpha = rank and a reloaded adapter with alpha != rank gives different outputs.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from core.config import ConfigError
from core.lora_check import check_lora_file, check_targets, transformer_layout
from core.models import get_family
from core.schema import LoraSpec, ModelConfig

METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the peft LoraConfig
PREFIX = "transformer."
COMFYUI_SUFFIX = "_comfyui"


def stage_targets(spec: LoraSpec, default: tuple[str, ...]) -> list[str]:
    """Per-block layer names to adapt: `lora.targets` (or the stage's), plus the image branch if asked."""
    targets = list(spec.targets or default)
    if spec.image_branch:
        targets += [t for t in get_family().lora_targets["image_branch"] if t not in targets]
    return targets


def resolve_targets(transformer: torch.nn.Module, spec: LoraSpec, default: tuple[str, ...]) -> list[str]:
    """The stage's targets, each matching only exportable (original-Wan-named) Linear layers of `transformer`."""
    targets = stage_targets(spec, default)
    check_targets(targets, {name: (m.in_features, m.out_features) for name, m in transformer.named_modules()
                            if isinstance(m, torch.nn.Linear)})
    return targets


def lora_config(spec: LoraSpec, targets: list[str]) -> LoraConfig:
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                      init_lora_weights=True)


def add_trainable_adapter(transformer: Any, spec: LoraSpec, targets: list[str]) -> list[torch.nn.Parameter]:
    """Add the stage's adapter, activate it next to any loaded (frozen) ones, return its parameters.

    peft makes every *active* adapter trainable, so the frozen ones are re-frozen here by name.
    """
    with warnings.catch_warnings():  # "multiple adapters": intended in stage 2
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.add_adapter(lora_config(spec, targets), adapter_name=spec.name)
    loaded = list(getattr(transformer, "peft_config", {}))
    transformer.set_adapters(loaded, [1.0] * len(loaded))
    params = []
    for name, param in transformer.named_parameters():
        trainable = f".{spec.name}." in name and ".lora_" in name
        param.requires_grad_(trainable)
        if trainable:
            params.append(param)
    return params


def adapter_state_dict(transformer: Any, name: str) -> dict[str, torch.Tensor]:
    """The adapter's weights under diffusers keys (no peft adapter name such as `.default.`)."""
    state = get_peft_model_state_dict(transformer, adapter_name=name)
    return {PREFIX + key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def load_adapter_weights(transformer: Any, name: str, state: dict[str, torch.Tensor]) -> None:
    """Put saved weights back into an existing adapter (resume); every key must land."""
    stripped = {key.removeprefix(PREFIX): value for key, value in state.items()}
    result = set_peft_model_state_dict(transformer, stripped, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
    if unexpected:
        raise ValueError(f"adapter '{name}' has no layers for {len(unexpected)} saved weights, e.g. {unexpected[0]}")


def peft_metadata(transformer: Any, name: str) -> dict[str, Any]:
    """The adapter's LoraConfig as diffusers stores it (JSON-safe, keys prefixed with `transformer.`)."""
    config = transformer.peft_config[name].to_dict()
    out = {}
    for key, value in config.items():
        if isinstance(value, set):
            value = sorted(value)
        out[PREFIX + key] = value
    return json.loads(json.dumps(out, default=str))


def write_lora_file(path: Path, state: dict[str, torch.Tensor], lora_metadata: dict[str, Any] | None,
                    extra: dict[str, str] | None = None) -> Path:
    """safetensors with diffusers' metadata layout plus our own string fields; atomic (temp, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt"}
    if lora_metadata is not None:
        metadata[METADATA_KEY] = json.dumps(lora_metadata, indent=2, sort_keys=True)
    metadata.update(extra or {})
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def find_lora_file(path: str | Path) -> Path:
    """A LoRA file from a file, an export folder, a checkpoint folder or a run folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.is_dir():
        raise ConfigError(f"LoRA '{p}' does not exist; pass a .safetensors file, a run folder or a checkpoint folder")
    for folder in (p, p / "adapter", p / "lora"):
        files = sorted(f for f in folder.glob("*.safetensors")
                       if not f.stem.endswith(COMFYUI_SUFFIX) and not f.name.startswith("trainer_rng_"))  # checkpoint RNG
        if len(files) == 1:
            return files[0]
        if len(files) > 1:
            raise ConfigError(f"LoRA folder '{folder}' holds {len(files)} files ({', '.join(f.name for f in files)}); "
                              "pass one file")
    from train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(p / "checkpoints")
    if latest is not None:
        return find_lora_file(latest)
    raise ConfigError(f"no LoRA file in '{p}' (looked in it, adapter/, lora/ and checkpoints/)")


def load_lora(transformer: Any, path: str | Path, name: str) -> Path:
    """Load a LoRA file (diffusers or original Wan keys) as a named adapter, the way pipelines do."""
    from diffusers import WanImageToVideoPipeline

    file = find_lora_file(path)
    state, metadata = WanImageToVideoPipeline.lora_state_dict(str(file), return_lora_metadata=True)
    with warnings.catch_warnings():  # "multiple adapters": stacking is the point here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`")
        transformer.load_lora_adapter(state, adapter_name=name, metadata=metadata, prefix="transformer")
    return file


def check_base_lora(path: str | Path, model: ModelConfig) -> Path:
    """Stage 2's base must be a stage-1 (style) LoRA file that fits the model; checked before the model loads."""
    file = find_lora_file(path)
    info = check_lora_file(file, transformer_layout(model), "base_lora")
    if info.stage is not None and info.stage != "style":
        raise ConfigError(f"base_lora '{file}' is a '{info.stage}' LoRA (stage 2's own output); stage 2 starts from "
                          "the stage-1 style LoRA: pass the stage-1 run folder or its lora/style.safetensors")
    return file


def load_base_lora(transformer: Any, path: str | Path, name: str, mode: str) -> Path:
    """Stage 2's starting point: the stage-1 LoRA, kept as a frozen adapter or fused into the weights."""
    file = load_lora(transformer, path, name)
    if mode == "merged":
        transformer.fuse_lora(adapter_names=[name])
        transformer.delete_adapters(name)
    for param in transformer.parameters():
        param.requires_grad_(False)
    return file
