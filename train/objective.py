"""Wan's rectified-flow (flow-matching) objective: how a clean latent becomes a training pair.

x_s = (1 - s) * x0 + s * noise at a noise level s in (0, 1); the transformer sees x_s (plus the
20 I2V condition channels) at timestep 1000 * s and predicts the velocity noise - x0. Wan
samples s with a shift k that spends more steps at high noise: s' = k s / (1 + (k - 1) s).
"""

from __future__ import annotations

import torch

from core.schema import ObjectiveConfig

NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan/SD3 flow shift (the same formula as diffusers' FlowMatchEulerDiscreteScheduler)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(cfg: ObjectiveConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise levels in (0, 1) for one batch, drawn on the CPU (so the stream is device independent)."""
    if cfg.timestep_sampling == "logit_normal":
        normal = torch.randn(batch, generator=generator) * cfg.logit_std + cfg.logit_mean
        sigmas = torch.sigmoid(normal)
    else:
        sigmas = torch.rand(batch, generator=generator)
        if cfg.timestep_sampling == "shifted":
            sigmas = shift_sigmas(sigmas, cfg.shift)
    return sigmas.clamp(1e-4, 1.0)


def heldout_sigmas(cfg: ObjectiveConfig) -> torch.Tensor:
    """The fixed noise levels of the held-out loss: evenly spaced quantiles, shifted like training."""
    n = cfg.heldout_sigmas
    grid = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return shift_sigmas(grid, cfg.shift) if cfg.timestep_sampling == "shifted" else grid


def noisy_pair(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_s, velocity target) for latents (B, C, F, H, W) at per-sample sigmas (B,)."""
    s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.dim() - 1)))
    return (1 - s) * latents + s * noise, noise - latents


def flow_target(noisy: torch.Tensor, latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                layout: object | None = None) -> torch.Tensor:
    """The velocity the model is trained towards: noise - x0 on stock tokens; on CAT tokens
    (`layout`, from `Denoiser.last_layout`) the perfect model's CAT velocity `cat.oracle_velocity`,
    whose coarse-cell minimiser is the pooled velocity P(noise - x0) (docs/cat.md). Like the
    prediction (`cat_forward(..., correct=False)`), it leaves out the coarse-cell correction,
    which is the same term on both sides: the loss is that of the corrected path."""
    if layout is None or getattr(layout, "uniform", False):
        return noise - latents
    import cat

    return cat.oracle_velocity(noisy, latents, sigmas.to(latents.device), layout, correct=False).to(latents.dtype)


def timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The transformer's timestep input for noise levels s."""
    return sigmas * NUM_TRAIN_TIMESTEPS


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32 (the prediction may come out of bf16 autocast)."""
    return torch.nn.functional.mse_loss(prediction.float(), target.float())
