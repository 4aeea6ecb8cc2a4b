"""The velocity a perfect transformer hands the scheduler through the CAT path.

A perfect model knows the clean latent x0. With stock tokens it returns the ideal rectified-flow
velocity v* = (x_s - x0) / sigma. Through CAT, a coarse token sees only its pooled patch y (the
mean of its region's noisy latent, plus the extra noise of `pool="renoise"`); the best it can
say is the velocity of that patch towards the pooled clean content, (y - P(x0)) / sigma. This
module pushes that through the very unpack and coarse-cell correction `cat_forward` uses, so it
is at once the harness's perfect model (`infer.oracle`), the tests' reference, and stage 2's
training target (`train.objective.flow_target`). docs/cat.md derives what a sampler converges
to with it: x0 on fine cells, U(P(x0)) on coarse ones, plus R(ref) = ref - U(P(ref)) on the
cells of tokens the allocation flags for reference detail (ref: the conditioning image's latent).
"""

from __future__ import annotations

import torch

from cat.allocation import Allocation
from cat.tokenizer import (
    Layout,
    build_layout,
    coarse_correction,
    gather_patches,
    inverse_sigma,
    reference_detail,
    scatter_patches,
    sigma_per_cell,
)


def token_sigma(sigma: torch.Tensor | float, layout: Layout, batch: int) -> torch.Tensor:
    """Noise level per token, broadcastable over (B, S, C, 2, 2) patches, float32: (B,) as is,
    a per-cell (B, F'H'W') sigma read at each token's first cell (as `embed_conditions` does)."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=layout.first_cell.device)
    if s.ndim <= 1:
        return s.reshape(-1, 1, 1, 1, 1).expand(batch, 1, 1, 1, 1)
    if not layout.uniform:
        s = s[:, layout.first_cell]
    return s.reshape(s.shape[0], -1, 1, 1, 1)


def oracle_velocity(
    noisy: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor | float,
    layout: Layout | Allocation | None = None,
    *,
    upsample: str = "nearest",
    pool: str = "mean",
    correct: bool = True,
    generator: torch.Generator | None = None,
    correction_sigma: torch.Tensor | float | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Velocity (B, C, F', 2H', 2W'), float32, of a perfect model through CAT tokens.

    `noisy`: x_s, the noisy channels only (B, C, F', 2H', 2W') (not the 20 condition channels;
    they are not denoised); `x0`: the clean latent, same shape; `sigma`: a number, (B,) or per
    cell (B, F'H'W'); `layout`: a `Layout` or `Allocation` (None = stock tokens: the ideal
    velocity (x_s - x0) / sigma). `upsample`, `pool` and `correct` as in `cat_forward` (a
    `renoise` draw uses `generator`). Cells at sigma = 0 get velocity 0. `correction_sigma`: the
    noise level the coarse-cell correction assumes (default `sigma`; `cat_forward` gets it from
    the sampler, or reads timestep / 1000). `reference`: the conditioning image's clean latent
    (B or 1, C, 1, 2H', 2W'), needed when the allocation flags tokens for reference detail."""
    if noisy.shape != x0.shape:
        raise ValueError(f"noisy {tuple(noisy.shape)} and x0 {tuple(x0.shape)} must have the same shape")
    x = noisy.float()
    clean = x0.to(x.device, torch.float32)
    if layout is None:
        f_, h, w = x.shape[2:]
        layout = build_layout(None, (f_, h // 2, w // 2))
        return (x - clean) * inverse_sigma(sigma_per_cell(sigma, layout, x.shape[0]).to(x.device))
    if isinstance(layout, Allocation):
        layout = build_layout(layout)
    layout = layout.to(x.device)
    batch_sigma = None
    if pool == "renoise":
        s = torch.as_tensor(sigma, dtype=torch.float32)
        batch_sigma = (s.reshape(-1) if s.ndim <= 1 else s.mean(dim=1)).expand(x.shape[0])
    seen = gather_patches(x, layout, pool=pool, sigma=batch_sigma, generator=generator)
    target = gather_patches(clean, layout)
    inv = inverse_sigma(token_sigma(sigma, layout, x.shape[0]).to(x.device))
    velocity = scatter_patches((seen - target) * inv, layout, upsample=upsample)
    if correct and not layout.uniform:
        corr_sigma = sigma if correction_sigma is None else correction_sigma
        velocity = velocity + coarse_correction(x, seen, corr_sigma, layout, upsample, reference)
    return velocity


def pooled_content(
    x0: torch.Tensor, layout: Layout | Allocation, upsample: str = "nearest", reference: torch.Tensor | None = None
) -> torch.Tensor:
    """U(P(x0)): x0 on fine cells, each coarse token's pooled content upsampled over its region,
    plus R(ref) on the cells of tokens flagged for reference detail (`reference`: the conditioning
    image's clean latent (B or 1, C, 1, 2H', 2W')): what the corrected sampler converges to under
    a perfect model."""
    if isinstance(layout, Allocation):
        layout = build_layout(layout)
    layout = layout.to(x0.device)
    out = scatter_patches(gather_patches(x0.float(), layout), layout, upsample=upsample)
    if bool(layout.detail_cells.any()):
        if reference is None:
            raise ValueError("this allocation restores the reference frame's detail; pass reference=")
        out = out + reference_detail(reference, out.shape, layout, upsample)
    return out
