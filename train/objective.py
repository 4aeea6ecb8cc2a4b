"""Wan's rectified-flow (flow-matching) objective: how a clean latent becomes a training pair.

The algebra (x_s = (1 - s) x0 + s noise, velocity noise - x0, timestep 1000 s, the shift) lives
in core.flow, shared with the sampler; here: how training draws its noise levels, the target on
CAT tokens and the loss.
"""

from __future__ import annotations

import torch

from core.flow import noisy_pair, shift_sigmas, timesteps
from core.schema import ObjectiveConfig

__all__ = ["flow_loss", "flow_target", "heldout_sigmas", "noisy_pair", "sample_sigmas", "timesteps"]


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


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in fp32 (the prediction may come out of bf16 autocast)."""
    return torch.nn.functional.mse_loss(prediction.float(), target.float())
