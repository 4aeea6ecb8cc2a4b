"""Check LoRA files and LoRA targets against the model's layout before any weights load.

The layout (every Linear layer's name and in/out features) comes from the transformer's
`config.json`, built on the meta device: no memory, seconds even for 14B. A LoRA file with
foreign keys, wrong shapes or a rank that contradicts its metadata, or a target that cannot be
exported under an original Wan (ComfyUI) name, stops here with one line instead of after the
model has loaded (or, for targets, after the whole training run).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from core.config import ConfigError
from core.models import get_family, model_folder
from core.schema import ModelConfig

METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the peft LoraConfig
_WEIGHT = re.compile(
    r"^(?:transformer\.|diffusion_model\.)?blocks\.(\d+)\.(.+)\.(lora_A|lora_B|lora_down|lora_up)\.weight$"
)
_ALPHA = re.compile(r"^(?:transformer\.|diffusion_model\.)?blocks\.(\d+)\.(.+)\.alpha$")
EXAMPLE_KEY = "transformer.blocks.0.attn2.to_q.lora_A.weight"

Layout = dict[str, tuple[int, int]]  # Linear layer name -> (in_features, out_features)


@functools.lru_cache(maxsize=4)
def _layout(config_json: str) -> Layout:
    from diffusers import WanTransformer3DModel

    with torch.device("meta"):
        transformer = WanTransformer3DModel.from_config(json.loads(config_json))
    return {
        name: (m.in_features, m.out_features)
        for name, m in transformer.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def transformer_layout(model: ModelConfig) -> Layout:
    """Every Linear layer of the configured transformer, from its config alone."""
    config = model_folder(model) / "transformer" / "config.json"
    if not config.is_file():
        raise ConfigError(f"model folder '{config.parent.parent}' has no transformer/config.json")
    return _layout(config.read_text())


def original_keys(model: ModelConfig) -> Mapping[str, str]:
    """The configured family's diffusers -> original (ComfyUI) per-block names."""
    return get_family(model.family).original_keys


def check_targets(targets: list[str], layout: Layout, original: Mapping[str, str]) -> None:
    """Each target must match (peft's suffix rule) at least one Linear layer, and only block layers with an
    original name in the family's map `original`: anything else trains and then cannot be exported for ComfyUI."""
    present = {_per_block(name) for name in layout}  # a family without the image branch does not offer it
    valid = ", ".join(name for name in original if name in present)
    for target in targets:
        matched = [name for name in layout if name == target or name.endswith("." + target)]
        if not matched:
            raise ConfigError(
                f"lora target '{target}' names no Linear layer of the transformer; use per-block layers: {valid}"
            )
        foreign = [name for name in matched if _per_block(name) not in original]
        if foreign:
            raise ConfigError(
                f"lora target '{target}' matches {foreign[0]}, which has no original Wan (ComfyUI) "
                f"name and could not be exported; use per-block layers: {valid}"
            )


def _per_block(name: str) -> str | None:
    parts = name.split(".", 2)
    return parts[2] if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() else None


@dataclass
class LoraFileInfo:
    path: Path
    layers: int  # adapted Linear layers
    ranks: set[int]
    stage: str | None  # cinelora.stage (style | motion) when the file came from train.export


def check_lora_file(path: str | Path, layout: Layout, label: str, original: Mapping[str, str]) -> LoraFileInfo:
    """Keys (original names read through the family's map `original`), shapes against `layout`, and rank
    against metadata; ConfigError (one line) on any mismatch."""
    from safetensors import safe_open

    to_diffusers = {name: diffusers for diffusers, name in original.items()}
    p = Path(path).expanduser()
    if p.suffix != ".safetensors":
        raise ConfigError(
            f"{label} '{p}' is not a .safetensors file; only safetensors LoRA files are loaded "
            "(a .pt/.bin pickle can run code): export it with python -m train.export"
        )
    try:
        with safe_open(str(p), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}  # noqa: SIM118
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises several types for damaged files
        raise ConfigError(f"{label} '{p}' is not a readable safetensors file: {str(exc).splitlines()[0]}") from exc
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        match = _WEIGHT.match(key)
        if match is None:
            if _ALPHA.match(key):
                continue
            raise ConfigError(
                f"{label} '{p}' holds '{key}', which is not a LoRA weight of a Wan transformer block "
                f"(expected keys like {EXAMPLE_KEY})"
            )
        block, layer, part = match.groups()
        name = f"blocks.{block}.{to_diffusers.get(layer, layer)}"
        if name not in layout:
            raise ConfigError(
                f"{label} '{p}' has weights for layer '{name}', which this model does not have "
                f"({sum(1 for n in layout if n.endswith('.attn1.to_q'))} blocks); is it for another model?"
            )
        pairs.setdefault(name, {})["A" if part in ("lora_A", "lora_down") else "B"] = shape
    if not pairs:
        raise ConfigError(f"{label} '{p}' holds no LoRA weights (expected keys like {EXAMPLE_KEY})")
    ranks = set()
    for name, pair in pairs.items():
        if set(pair) != {"A", "B"}:
            raise ConfigError(f"{label} '{p}' has only lora_{'A' if 'A' in pair else 'B'} for layer '{name}'")
        (rank, fan_in), (fan_out, rank_b) = pair["A"], pair["B"]
        expected = layout[name]
        if (fan_in, fan_out) != expected or rank != rank_b:
            raise ConfigError(
                f"{label} '{p}': layer '{name}' has LoRA shapes A {list(pair['A'])}, B {list(pair['B'])}; "
                f"this model needs A [r, {expected[0]}] and B [{expected[1]}, r]"
            )
        ranks.add(rank)
    _check_rank_metadata(p, label, metadata, ranks)
    return LoraFileInfo(path=p, layers=len(pairs), ranks=ranks, stage=metadata.get("cinelora.stage") or None)


def _check_rank_metadata(p: Path, label: str, metadata: dict[str, str], ranks: set[int]) -> None:
    declared = []
    if METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{label} '{p}' has unreadable {METADATA_KEY} metadata: {exc}") from exc
        rank = config.get("transformer.r", config.get("r"))
        if rank is not None and not (config.get("transformer.rank_pattern") or config.get("rank_pattern")):
            declared.append(("lora_adapter_metadata r", int(rank)))
    if metadata.get("cinelora.rank"):
        declared.append(("cinelora.rank", int(metadata["cinelora.rank"])))
    for source, rank in declared:
        if ranks != {rank}:
            raise ConfigError(
                f"{label} '{p}': its metadata ({source}) says rank {rank} but the weights have rank "
                f"{', '.join(map(str, sorted(ranks)))}; the file is damaged or was edited"
            )
