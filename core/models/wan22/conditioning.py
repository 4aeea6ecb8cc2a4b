"""Wan2.2 TI2V image conditioning through the first latent frame, as diffusers runs it.

`WanImageToVideoPipeline(expand_timesteps=True)` encodes the conditioning image alone (one
pixel frame -> one latent frame), puts that clean latent in place of the noisy latent's frame 0
at every step (`(1 - m) * condition + m * latents`, m = 0 on frame 0), gives the transformer a
per-token timestep that is 0 on frame-0 tokens and t elsewhere, and imposes the frame once more
on the final latent before decoding. Training does the same and leaves frame 0 out of the loss
(the model is never asked to denoise a frame it is given).

A one-latent-frame clip (a keyframe window, an image) has no frame to predict after the given
one; TI2V-5B is also a text-to-video model, so such a clip is taken unconditioned (text to
image): noisy frame, timestep t everywhere, scored in full.
"""

from __future__ import annotations

import torch

from core.models.base import Components, normalize_latents


@torch.no_grad()
def encode_condition(comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The normalised latent (B, 48, 1, H/16, W/16) of the first frame (B, 3, H, W) in [-1, 1],
    encoded alone (the pipeline's `video_condition = image`); `num_frames` does not change it."""
    vae = comp.vae
    video = first_frame.unsqueeze(2).to(vae.device, vae.dtype)
    return normalize_latents(vae, vae.encode(video).latent_dist.mode())


def with_first_frame(latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """`latents` (B, C, F', h, w) with frame 0 replaced by the condition latent (B, C, 1, h, w).
    Bit for bit the pipeline's mask blend: 1 * a + 0 * b is a exactly for finite values.
    A one-frame latent is returned as is (unconditioned, see the module docstring)."""
    if latents.shape[2] == 1:
        return latents
    return torch.cat([condition[:, :, :1].to(latents.dtype), latents[:, :, 1:]], dim=2)


def loss_frames(tensor: torch.Tensor) -> torch.Tensor:
    """The frames a loss scores: 1.. (frame 0 is given), or the one frame of an unconditioned image."""
    return tensor if tensor.shape[2] == 1 else tensor[:, :, 1:]


def per_token_timestep(timestep: torch.Tensor, latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(B,) timesteps -> (B, F'H'W') in token order with 0 on frame-0 tokens (float32, as the
    pipeline's float mask times t); t everywhere for a one-frame latent."""
    b, _, f, h, w = latents.shape
    grid = (f // patch[0], h // patch[1], w // patch[2])
    mask = torch.ones(grid, dtype=torch.float32, device=latents.device)
    if f > 1:
        mask[0] = 0
    t = timestep.to(latents.device).reshape(-1, 1)
    if t.shape[0] not in (1, b):
        raise ValueError(f"timestep has {t.shape[0]} entries for a batch of {b}")
    return (mask.flatten().unsqueeze(0) * t).expand(b, -1)
