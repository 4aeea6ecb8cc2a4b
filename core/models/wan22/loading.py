"""Wan2.2 TI2V-5B loading: a local `Wan-AI/Wan2.2-TI2V-5B-Diffusers` folder, or the tiny preset
written once in that layout and loaded through the same code."""

from __future__ import annotations

from pathlib import Path

import torch

from core.config import ConfigError
from core.memory import apply_base_dtype, place_transformer
from core.models.base import Components, ModelFamily
from core.models.common import TORCH_DTYPES, check_diffusers_folder, model_folder_or_preset, resolve_device
from core.models.wan22.preset import SUBFOLDERS, TINY_FORMAT, build_tiny
from core.schema import ModelConfig

FAMILY_NAME = "wan2.2-ti2v"


def model_folder(cfg: ModelConfig) -> Path:
    """`model.path` (checked), or the tiny preset's cache folder (built on first use)."""
    return model_folder_or_preset(cfg, check_folder, build_tiny, "wan22-ti2v", f"wan22:{TINY_FORMAT}:{cfg.seed}")


def check_folder(folder: Path) -> None:
    """One clear error listing what a Wan2.2 TI2V diffusers folder must contain."""
    check_diffusers_folder(folder, SUBFOLDERS, "Wan2.2 TI2V", "Wan-AI/Wan2.2-TI2V-5B-Diffusers")


def check_transformer(transformer: object, folder: Path) -> None:
    """A Wan2.1 (or other) folder given with model.family=wan2.2-ti2v fails here, in one line."""
    conf = transformer.config
    if conf.in_channels != 48 or conf.out_channels != 48 or conf.added_kv_proj_dim is not None:
        raise ConfigError(
            f"model.path '{folder}' holds a transformer with in/out channels {conf.in_channels}/{conf.out_channels}"
            f"{' and an image branch' if conf.added_kv_proj_dim else ''}; model.family=wan2.2-ti2v needs "
            "Wan2.2 TI2V-5B (48/48, no image branch): check model.family and model.path"
        )


def load_components(cfg: ModelConfig, family: ModelFamily) -> Components:
    """Every component from the resolved folder with the configured dtype, device and memory options.
    There is no image encoder: `image_encoder` / `image_processor` stay None."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    if cfg.transformer_file:
        raise ConfigError(
            f"model.transformer_file is read for model.family=wan2.1-i2v only (original/ComfyUI I2V files); "
            f"for {FAMILY_NAME} unset it and load the transformer from model.path"
        )
    folder = model_folder(cfg)
    dtype = TORCH_DTYPES[cfg.dtype]
    device = resolve_device(cfg.device)
    transformer_dtype = dtype if cfg.base_dtype is None else torch.bfloat16
    try:
        transformer = WanTransformer3DModel.from_pretrained(
            folder, subfolder="transformer", torch_dtype=transformer_dtype
        )
        vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
        text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        scheduler = UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load Wan2.2 components from '{folder}': {str(exc).splitlines()[0]}") from exc
    check_transformer(transformer, folder)
    for module in (transformer, vae, text_encoder):
        module.requires_grad_(False).eval()
    apply_base_dtype(transformer, cfg.base_dtype)
    if not cfg.cpu_offload:
        vae.to(device)
        text_encoder.to(device)
        place_transformer(transformer, device, cfg.blocks_to_swap)
    model_id = family.model_id(cfg)
    transformer.cinelora_family = FAMILY_NAME  # lets cat_forward find the family from the transformer
    return Components(
        transformer,
        vae,
        text_encoder,
        tokenizer,
        None,
        None,
        scheduler,
        model_id=model_id,
        folder=folder,
        device=device,
        dtype=dtype,
        family=family,
    )
