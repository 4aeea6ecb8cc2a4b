"""Wan's rectified-flow (flow-matching) algebra, shared by training, sampling and CAT.

A clean latent x0 and Gaussian noise meet at a noise level s in (0, 1): x_s = (1 - s) x0 + s noise.
The transformer sees x_s at timestep NUM_TRAIN_TIMESTEPS * s and predicts the velocity
v = noise - x0, so x0 = x_s - s v. Wan spends more steps at high noise with the shift k:
s' = k s / (1 + (k - 1) s) (diffusers' FlowMatchEulerDiscreteScheduler uses the same formula).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep is sigma * 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 flow shift of noise levels in (0, 1)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The transformer's timestep input for noise levels s."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def noisy_pair(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, velocity target noise - x0) for latents (B, C, F, H, W) at per-sample sigmas (B,)."""
    s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
    return (1 - s) * latents + s * noise, noise - latents


def predicted_clean(latents: torch.Tensor, velocity: torch.Tensor, sigma: float) -> torch.Tensor:
    """x0 = x_s - s v: the clean latent a velocity prediction implies (float32)."""
    return latents - sigma * velocity.float()
