"""`cat.allocate`: complexity maps of a clip (or latent) turned into an allocation in one call."""

from __future__ import annotations

import torch

from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation, allocate_from_complexity
from cat.complexity import Complexity, latent_complexity, region_complexity
from core.models import Geometry


def complexity_of(
    video: torch.Tensor,
    grid: tuple[int, int, int],
    geometry: Geometry | None = None,
    reference: bool | torch.Tensor = False,
) -> Complexity:
    """Pixel clip (B, 3, T, H, W) -> `region_complexity`; anything with C != 3 channels and shape
    (B, C, F', 2H', 2W') is a latent -> `latent_complexity`. `reference` (see `allocate`) also
    fills `Complexity.spatial_ref`."""
    if video.ndim != 5:
        raise ValueError(f"expected (B, C, T, H, W), got shape {tuple(video.shape)}")
    pixels = video.shape[1] == 3
    if isinstance(reference, torch.Tensor):
        if pixels:
            raise ValueError(
                "reference: a pixel clip's reference is its own frame 0; pass reference=True, "
                "not a tensor (a reference tensor is for a latent)"
            )
        return latent_complexity(video, grid, reference=reference)
    if pixels:
        return region_complexity(video, grid, geometry=geometry, reference=bool(reference))
    return latent_complexity(video, grid, reference=video[:, :, :1] if reference else None)


def allocate(
    video: torch.Tensor,
    grid: tuple[int, int, int],
    rho: float | None = None,
    thresholds: tuple[float, float] | None = None,
    temporal_weight: float = 1.0,
    geometry: Geometry | None = None,
    reference: bool | torch.Tensor = False,
) -> Allocation:
    """The CAT allocation for a clip on the transformer's (F', H', W') patch grid.

    `video`: a pixel clip (B, 3, T, H, W) in [-1, 1] (or uint8 0..255) with T = 1 + 4(F'-1),
    H = cell_px H', W = cell_px W' (the model family's `geometry`; None = the default family's:
    Wan2.1, T = 1 + 4(F'-1), 16-px cells); or a latent (B, C, F', 2H', 2W') with C != 3 (the 16-channel noisy or
    predicted clean latent during inference), read by `latent_complexity`. Exactly one of `rho`
    (keep ratio) or `thresholds` (spatial, temporal; pixel thresholds are in luma units 0..255,
    latent ones in latent units). With B > 1 the batch shares one partition (max complexity
    over the samples); call once per sample for per-sample allocations.

    `reference` (image-to-video reference detail, docs/cat.md): coarse tokens may also restore the
    conditioning image's sub-token detail where that loses less (`Allocation.detail`). For a pixel
    clip `True` means its frame 0 is the conditioning image. For a latent pass the image's clean
    latent, best held still over the clip (B|1, C, F', 2H', 2W'; `ModelFamily.still_latent`) or one
    frame (B|1, C, 1, 2H', 2W'), or `True` for the latent's own frame 0 (the image encoded alone
    when the latent is a clean I2V clip's). Default False: plain pooling only, as before."""
    return allocate_from_complexity(
        complexity_of(video, grid, geometry, reference), rho=rho, thresholds=thresholds, temporal_weight=temporal_weight
    )


def detail_tokens(allocation: Allocation | None) -> int:
    """How many coarse tokens of `allocation` restore the reference frame's sub-token detail (0 for
    None = stock tokens): flagged spatial blocks, plus flagged spatio-temporal blocks counted once
    per frame pair (reports: generate.json, the A/B)."""
    if allocation is None:
        return 0
    levels, detail = allocation.levels, allocation.detail
    return int((detail & (levels == SPATIAL)).sum()) + int((detail & (levels == SPATIOTEMPORAL)).sum()) // 2
