"""Wan2.1 I2V loading: components from a local diffusers-layout folder, and the tiny preset.

Components always load from a local folder in the diffusers layout of
``Wan-AI/Wan2.1-I2V-14B-720P-Diffusers``. The ``tiny`` preset is a random, seeded model with
the real I2V image branch, written once to a cache folder in that same layout and then
loaded through the same code, so the real-weights path is the one the tests exercise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from core.config import ConfigError
from core.memory import apply_base_dtype, place_transformer
from core.models.base import Components
from core.models.common import (
    TORCH_DTYPES,
    check_diffusers_folder,
    model_folder_or_preset,
    resolve_device,
    tiny_text_encoder,
)
from core.schema import ModelConfig

FAMILY_NAME = "wan2.1-i2v"
PATCH = (1, 2, 2)
SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "image_processor", "scheduler")

# diffusers' transformer/config.json of Wan-AI/Wan2.1-I2V-14B-720P-Diffusers (benchmarks build it
# with a few blocks; `FAMILY.cost_dims` are its dims)
REAL_TRANSFORMER = dict(
    patch_size=PATCH,
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=36,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=1280,
    added_kv_proj_dim=5120,
    rope_max_seq_len=1024,
)
TINY_TRANSFORMER = dict(
    patch_size=PATCH,
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=36,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    rope_max_seq_len=32,
    image_dim=4,
    added_kv_proj_dim=24,  # = inner dim: gives the tiny model the real I2V image branch
)
# A mid-size random transformer for speed benchmarks (cat.bench, infer.bench): big enough that
# attention dominates as in the 14B model, small enough for a 2-core CPU.
MIDSIZE_TRANSFORMER = dict(
    TINY_TRANSFORMER,
    num_attention_heads=8,
    attention_head_dim=64,
    ffn_dim=1536,
    num_layers=4,
    added_kv_proj_dim=512,
)
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
TINY_FORMAT = 1  # bump when the tiny recipe changes so stale caches are rebuilt


def model_folder(cfg: ModelConfig) -> Path:
    """The folder to load from: `model.path`, or the tiny preset's cache (built on first use)."""
    return model_folder_or_preset(cfg, check_folder, build_tiny, "wan-i2v", f"{TINY_FORMAT}:{cfg.seed}")


def check_folder(folder: Path) -> None:
    """One clear error listing what a Wan2.1 I2V diffusers folder must contain."""
    check_diffusers_folder(folder, SUBFOLDERS, "Wan2.1 I2V", "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers")


def load_components(cfg: ModelConfig) -> Components:
    """Load every component from the resolved folder with the configured dtype and device.

    The transformer comes from `model.transformer_file` when set (original/ComfyUI single file,
    config from the folder); `model.base_dtype` then sets its storage (bf16, or fp8 with bf16
    compute) and `model.blocks_to_swap` keeps its last N blocks' weights on the host."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    folder = model_folder(cfg)
    dtype = TORCH_DTYPES[cfg.dtype]
    device = resolve_device(cfg.device)
    transformer_dtype = dtype if cfg.base_dtype is None else torch.bfloat16
    if cfg.transformer_file:
        from core.models.wan21.single_file import load_transformer_file

        transformer = load_transformer_file(cfg.transformer_file, folder, transformer_dtype)
    try:
        if not cfg.transformer_file:
            transformer = WanTransformer3DModel.from_pretrained(
                folder, subfolder="transformer", torch_dtype=transformer_dtype
            )
        vae = AutoencoderKLWan.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32)
        text_encoder = UMT5EncoderModel.from_pretrained(folder / "text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
        image_encoder = CLIPVisionModel.from_pretrained(folder / "image_encoder", dtype=torch.float32)
        image_processor = CLIPImageProcessor.from_pretrained(folder / "image_processor")
        scheduler = UniPCMultistepScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load Wan components from '{folder}': {str(exc).splitlines()[0]}") from exc
    for module in (transformer, vae, text_encoder, image_encoder):
        module.requires_grad_(False).eval()
    apply_base_dtype(transformer, cfg.base_dtype)
    if not cfg.cpu_offload:
        for module in (vae, text_encoder, image_encoder):
            module.to(device)
        place_transformer(transformer, device, cfg.blocks_to_swap)
    model_id = cfg.model_id or (folder.name if cfg.path else f"tiny-seed{cfg.seed}")
    from core.models.wan21.family import FAMILY

    transformer.cinelora_family = FAMILY_NAME  # lets cat_forward find the family from the transformer
    return Components(
        transformer,
        vae,
        text_encoder,
        tokenizer,
        image_encoder,
        image_processor,
        scheduler,
        model_id=model_id,
        folder=folder,
        device=device,
        dtype=dtype,
        family=FAMILY,
    )


# ---------------------------------------------------------------- tiny preset
def _tiny_tokenizer() -> Any:
    """A small Unigram T5 tokenizer built in memory (no download)."""
    from transformers import T5Tokenizer

    words = (
        "a the of and in on with at cinematic shot film grain warm cold light dark scene man woman "
        "walks runs street room night day sky sea city close wide portrait camera moves slowly fast "
        "style costume color red blue green gold orange teal vignette letterbox smoke fire rain"
    ).split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -float(i) / 10 - 1) for i, w in enumerate(words)]
    vocab += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,'-"]
    vocab += [("\u2581" + c, -21.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    vocab += [("\u2581", -25.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_modules(seed: int = 0) -> dict[str, Any]:
    """The tiny preset's components in memory, random and seeded (nothing is downloaded)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer()
    return dict(
        transformer=WanTransformer3DModel(**TINY_TRANSFORMER),
        vae=AutoencoderKLWan(**TINY_VAE),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        image_encoder=CLIPVisionModel(
            CLIPVisionConfig(
                hidden_size=4,
                projection_dim=4,
                num_hidden_layers=2,
                num_attention_heads=2,
                image_size=32,
                intermediate_size=16,
                patch_size=4,
            )
        ),
        image_processor=CLIPImageProcessor(crop_size=32, size=32),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0),
    )


def build_tiny(folder: Path, seed: int = 0) -> None:
    """Write the tiny preset in the diffusers layout (atomically: temp folder, then rename)."""
    modules = tiny_modules(seed)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        module.save_pretrained(tmp / name)
    index = {
        "_class_name": "WanImageToVideoPipeline",
        "_diffusers_version": "0.42.1",
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "image_encoder": ["transformers", "CLIPVisionModel"],
        "image_processor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
    }
    (tmp / "model_index.json").write_text(json.dumps(index, indent=2))
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
