"""LoRA on the frozen Wan transformer: which layers, which adapter trains, and the file format.

Files are always diffusers-format safetensors (`transformer.<layer>.lora_A.weight`) carrying
the peft `LoraConfig` as `lora_adapter_metadata`: without it diffusers falls back to
alpha = rank and a reloaded adapter with alpha != rank gives different outputs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from core.config import ConfigError
from core.io import atomic_path
from core.lora_check import METADATA_KEY, check_lora_file, check_targets, original_keys, transformer_layout
from core.lora_files import find_lora_file, load_lora
from core.models import ModelFamily
from core.schema import LoraSpec, ModelConfig

PREFIX = "transformer."


def preset_targets(family: ModelFamily, presets: tuple[str, ...]) -> tuple[str, ...]:
    """The per-block layer names of the family's LoRA target presets (e.g. "cross_attn"), in order."""
    missing = [name for name in presets if name not in family.lora_targets]
    if missing:
        raise ConfigError(f"model.family {family.name} has no LoRA target preset '{missing[0]}' "
                          f"(it has {', '.join(family.lora_targets)}); set lora.targets explicitly")
    return tuple(t for name in presets for t in family.lora_targets[name])


def stage_targets(spec: LoraSpec, presets: tuple[str, ...], family: ModelFamily) -> list[str]:
    """Per-block layer names to adapt: `lora.targets` (or the stage's presets, resolved by the configured
    family), plus the family's image branch if asked."""
    targets = list(spec.targets or preset_targets(family, presets))
    if spec.image_branch:
        targets += [t for t in family.image_branch_targets() if t not in targets]
    return targets


def resolve_targets(transformer: torch.nn.Module, spec: LoraSpec, presets: tuple[str, ...],
                    family: ModelFamily) -> list[str]:
    """The stage's targets, each matching only exportable (original-named) Linear layers of `transformer`."""
    targets = stage_targets(spec, presets, family)
    check_targets(targets, {name: (m.in_features, m.out_features) for name, m in transformer.named_modules()
                            if isinstance(m, torch.nn.Linear)}, family.original_keys)
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
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return path


def read_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def check_base_lora(path: str | Path, model: ModelConfig) -> Path:
    """Stage 2's base must be a stage-1 (style) LoRA file that fits the model; checked before the model loads."""
    file = find_lora_file(path)
    info = check_lora_file(file, transformer_layout(model), "base_lora", original_keys(model))
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
