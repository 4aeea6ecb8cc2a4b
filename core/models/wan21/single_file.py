"""Single-file Wan2.1 transformers: the original release's layout and ComfyUI's repackaged files.

`load_transformer_file` checks the file's keys and shapes against the transformer config of the
model folder (or the tiny preset), then hands the state dict to diffusers'
`WanTransformer3DModel.from_single_file` with that config, so nothing is looked up on the hub.
Original files name keys `blocks.N.self_attn.q.weight`, `head.modulation`, `img_emb.proj.1.weight`;
ComfyUI prefixes them with `model.diffusion_model.` (diffusers' converter strips that prefix);
some exports use `diffusion_model.`, which is stripped here. safetensors only (no pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError

PREFIXES = ("model.diffusion_model.", "diffusion_model.")
REQUIRED = ("patch_embedding.weight", "head.modulation", "blocks.0.self_attn.q.weight")
IMAGE_BRANCH = "img_emb.proj.1.weight"

# diffusers name part -> original name part (inverse of diffusers' `convert_wan_transformer_to_diffusers`);
# applied in this order to dotted names.
_TO_ORIGINAL = (
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1.", "self_attn."),
    ("attn2.", "cross_attn."),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
)


def to_original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers `WanTransformer3DModel` state dict under the original Wan2.1 key names."""
    out = {}
    for key, value in state.items():
        new = key
        if new == "scale_shift_table":
            new = "head.modulation"
        elif new.startswith("proj_out."):
            new = "head.head." + new.removeprefix("proj_out.")
        elif new.startswith("blocks.") and new.endswith(".scale_shift_table"):
            new = new.removesuffix("scale_shift_table") + "modulation"
        for diffusers_part, original_part in _TO_ORIGINAL:
            new = new.replace(diffusers_part, original_part)
        if new.startswith("blocks."):  # diffusers swapped norm2 (FFN in the original) and norm3 (cross-attention)
            parts = new.split(".")
            if parts[2] in ("norm2", "norm3"):
                parts[2] = "norm3" if parts[2] == "norm2" else "norm2"
            new = ".".join(parts)
        out[new] = value
    return out


def strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if any(key.startswith(prefix) for key in state):
            return {key.removeprefix(prefix): value for key, value in state.items()}
    return state


def check_state(state: dict[str, torch.Tensor], config: dict[str, Any], file: Path) -> None:
    """One-line errors for a file that is not the Wan2.1 I2V transformer the config describes."""
    expected = (
        f"a Wan2.1 I2V transformer in the original or ComfyUI layout ({config['num_layers']} blocks, "
        f"width {config['num_attention_heads'] * config['attention_head_dim']}, "
        f"{config['in_channels']} input channels)"
    )
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        raise ConfigError(
            f"model.transformer_file '{file}' is not {expected}: it lacks {missing[0]} (its keys start with {sample})"
        )
    out_dim, in_channels = state["patch_embedding.weight"].shape[:2]
    layers = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    width = config["num_attention_heads"] * config["attention_head_dim"]
    found = f"{layers} blocks, width {out_dim}, {in_channels} input channels"
    if IMAGE_BRANCH not in state or in_channels != config["in_channels"]:
        kind = "a Wan text-to-video transformer" if IMAGE_BRANCH not in state else "another Wan variant"
        raise ConfigError(f"model.transformer_file '{file}' is {kind} ({found}); expected {expected}")
    if out_dim != width or layers != config["num_layers"]:
        raise ConfigError(
            f"model.transformer_file '{file}' has {found}; expected {expected} (the config comes from "
            "model.path's transformer/config.json: use the folder of the same model size)"
        )


def load_transformer_file(file: str | Path, folder: Path, dtype: torch.dtype) -> Any:
    """`WanTransformer3DModel` from a single original/ComfyUI safetensors file, config from `folder/transformer`."""
    from diffusers import WanTransformer3DModel
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.transformer_file '{path}' does not exist; pass a Wan2.1 I2V .safetensors file")
    if path.suffix != ".safetensors":
        raise ConfigError(
            f"model.transformer_file '{path}' is not a .safetensors file (pickled .pt/.ckpt files "
            "are refused: convert them to safetensors)"
        )
    try:
        state = strip_prefix(load_file(str(path)))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(
            f"model.transformer_file '{path}' is not a readable safetensors file: {str(exc).splitlines()[0]}"
        ) from exc
    config = WanTransformer3DModel.load_config(folder, subfolder="transformer")
    check_state(state, config, path)
    try:
        return WanTransformer3DModel.from_single_file(
            state, config=str(folder), subfolder="transformer", torch_dtype=dtype, local_files_only=True
        )
    except (ValueError, RuntimeError, KeyError) as exc:
        raise ConfigError(
            f"model.transformer_file '{path}' did not load into the Wan2.1 I2V transformer: {str(exc).splitlines()[0]}"
        ) from exc
