"""Wan2.1 I2V encoders and conditioning, exactly as `WanImageToVideoPipeline` builds them."""

from __future__ import annotations

from typing import Any

import torch

from core.models.base import Components, normalize_latents
from core.models.wan21.geometry import GEOMETRY

# Wan's text context is always 512 UMT5 tokens (`encode_prompt` pads to exactly that); the attention
# processor takes every context token before the last 512 as an image token, so a wrong length would
# run without error and split wrongly.
TEXT_TOKENS = GEOMETRY.text_tokens
VAE_SCALE_SPATIAL = GEOMETRY.vae_s
VAE_SCALE_TEMPORAL = GEOMETRY.vae_t


def latent_frames(num_frames: int) -> int:
    """Wan's VAE maps 1 + 4k frames to 1 + k latent frames."""
    return GEOMETRY.latent_frames(num_frames)


def patch_grid(num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """The transformer's (F', H', W') patch grid for a pixel clip."""
    return GEOMETRY.patch_grid(num_frames, height, width)


@torch.no_grad()
def encode_prompt(comp: Components, prompts: list[str]) -> torch.Tensor:
    """UMT5 embeddings padded to 512 tokens, zeroed past each prompt's end (as Wan does)."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    texts = [prompt_clean(p) for p in prompts]
    tok = comp.tokenizer(
        texts,
        padding="max_length",
        max_length=TEXT_TOKENS,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = tok.input_ids.to(comp.device), tok.attention_mask.to(comp.device)
    hidden = comp.text_encoder(ids, mask).last_hidden_state
    return hidden * mask.unsqueeze(-1).to(hidden.dtype)


@torch.no_grad()
def encode_image(comp: Components, images: Any) -> torch.Tensor:
    """CLIP penultimate hidden states of the conditioning image(s), as the I2V pipeline uses."""
    pixels = comp.image_processor(images=images, return_tensors="pt").pixel_values.to(comp.device)
    out = comp.image_encoder(pixel_values=pixels, output_hidden_states=True)
    return out.hidden_states[-2]


@torch.no_grad()
def encode_video(comp: Components, video: torch.Tensor) -> torch.Tensor:
    """Normalised VAE latents (B, 16, F', H/8, W/8) of a pixel clip (B, 3, T, H, W) in [-1, 1]."""
    vae = comp.vae
    latents = vae.encode(video.to(vae.device, vae.dtype)).latent_dist.mode()
    return normalize_latents(vae, latents)


@torch.no_grad()
def encode_condition(comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The 20-channel I2V condition: 4-channel first-frame mask + 16-channel latent of
    (first frame, then zeros), exactly as `WanImageToVideoPipeline.prepare_latents` builds it.

    `first_frame` is (B, 3, H, W) in [-1, 1]; returns (B, 20, F', H/8, W/8).
    """
    b, _, h, w = first_frame.shape
    video = torch.zeros(b, 3, num_frames, h, w, dtype=first_frame.dtype, device=first_frame.device)
    video[:, :, 0] = first_frame
    cond = encode_video(comp, video)
    f_lat = latent_frames(num_frames)
    mask = torch.zeros(b, 1, num_frames, h // VAE_SCALE_SPATIAL, w // VAE_SCALE_SPATIAL, device=cond.device)
    mask[:, :, 0] = 1
    first = mask[:, :, :1].repeat_interleave(VAE_SCALE_TEMPORAL, dim=2)
    mask = torch.cat([first, mask[:, :, 1:]], dim=2)
    mask = mask.view(b, -1, VAE_SCALE_TEMPORAL, h // VAE_SCALE_SPATIAL, w // VAE_SCALE_SPATIAL).transpose(1, 2)
    assert mask.shape[2] == f_lat
    return torch.cat([mask.to(cond.dtype), cond], dim=1)


def model_input(noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """The transformer's 36-channel input: 16 noisy latent + 20 condition channels."""
    return torch.cat([noisy, condition.to(noisy.dtype)], dim=1)


def reference_latent(model_input: torch.Tensor) -> torch.Tensor | None:
    """The first frame's clean latent (B, 16, 1, h, w) from a 36-channel input whose mask marks
    frame 0 as given (the condition latent's frame 0 is the image encoded alone: causal VAE),
    else None."""
    noisy = GEOMETRY.noisy_channels
    if model_input.shape[1] != GEOMETRY.in_channels:
        return None
    mask = model_input[:, noisy : noisy + VAE_SCALE_TEMPORAL, :1]  # the mask's 4 channels come first
    if not bool((mask > 0.5).all()):
        return None
    return model_input[:, noisy + VAE_SCALE_TEMPORAL : noisy + VAE_SCALE_TEMPORAL + noisy, :1]
