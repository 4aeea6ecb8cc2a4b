"""Wan2.2 TI2V-5B's folder layout and its tiny random preset.

The real `Wan-AI/Wan2.2-TI2V-5B-Diffusers` folder holds `model_index.json` (a `WanPipeline`
with `expand_timesteps: true`) and `transformer, vae, text_encoder, tokenizer, scheduler`; there
is no CLIP image encoder: the image enters as the first latent frame. The tiny preset is written
in that same layout with the same structure at small sizes (48 latent channels, the residual
Wan2.2 VAE with its 2x2 pixel patchify, 16x spatial compression, no image branch), then loaded
through the same code as real weights.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

SUBFOLDERS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
LATENT_CHANNELS = 48
FLOW_SHIFT = 5.0  # the TI2V-5B scheduler's flow shift (diffusers' conversion script)

# The real transformer (Wan-AI/Wan2.2-TI2V-5B-Diffusers transformer/config.json), for reference
# and the size estimates in the README: 30 layers, 24 heads x 128, ffn 14336, text_dim 4096.
REAL_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=24,
    attention_head_dim=128,
    in_channels=48,
    out_channels=48,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=14336,
    num_layers=30,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
)
TINY_TRANSFORMER = dict(
    REAL_TRANSFORMER,
    num_attention_heads=2,
    attention_head_dim=12,
    text_dim=32,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
# The real VAE is base_dim 160 / decoder_base_dim 256, dim_mult [1, 2, 4, 4], 2 res blocks.
TINY_VAE = dict(
    base_dim=8,
    decoder_base_dim=12,
    z_dim=LATENT_CHANNELS,
    dim_mult=[1, 1, 1, 1],
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_spatial=16,
    scale_factor_temporal=4,
)
TINY_FORMAT = 1  # bump when the tiny recipe changes so stale caches are rebuilt


def model_index() -> dict[str, Any]:
    """The `model_index.json` of the real TI2V-5B diffusers folder (same keys and classes)."""
    return {
        "_class_name": "WanPipeline",
        "_diffusers_version": "0.42.1",
        "boundary_ratio": None,
        "expand_timesteps": True,
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
        "transformer": ["diffusers", "WanTransformer3DModel"],
        "transformer_2": [None, None],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }


def tiny_modules(seed: int = 0) -> dict[str, Any]:
    """The tiny preset's components in memory, random and seeded (nothing is downloaded).

    The VAE's 48-channel latents_mean/std are seeded values (not all 0/1), so a normalisation
    that ignored them or mixed up channels would show in tests."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    from core.models.common import tiny_text_encoder
    from core.models.wan21.loading import _tiny_tokenizer

    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer()
    stats = torch.Generator().manual_seed(seed + 1)
    mean = (0.1 * torch.randn(LATENT_CHANNELS, generator=stats)).tolist()
    std = (0.5 + torch.rand(LATENT_CHANNELS, generator=stats)).tolist()
    return dict(
        transformer=WanTransformer3DModel(**TINY_TRANSFORMER),
        vae=AutoencoderKLWan(**TINY_VAE, latents_mean=mean, latents_std=std),
        text_encoder=tiny_text_encoder(len(tokenizer)),
        tokenizer=tokenizer,
        scheduler=UniPCMultistepScheduler(
            prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT
        ),
    )


def build_tiny(folder: Path, seed: int = 0) -> None:
    """Write the tiny preset in the real folder's layout (atomically: temp folder, then rename)."""
    modules = tiny_modules(seed)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for name, module in modules.items():
        module.save_pretrained(tmp / name)
    (tmp / "model_index.json").write_text(json.dumps(model_index(), indent=2))
    try:
        tmp.rename(folder)
    except OSError:  # another process built it first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
