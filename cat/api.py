"""`cat.allocate`: complexity maps of a clip (or latent) turned into an allocation in one call."""

from __future__ import annotations

import torch

from cat.allocation import Allocation, allocate_from_complexity
from cat.complexity import Complexity, latent_complexity, region_complexity
from core.models import Geometry


def complexity_of(video: torch.Tensor, grid: tuple[int, int, int], geometry: Geometry | None = None) -> Complexity:
    """Pixel clip (B, 3, T, H, W) -> `region_complexity`; anything with C != 3 channels and shape
    (B, C, F', 2H', 2W') is a latent -> `latent_complexity`."""
    if video.ndim != 5:
        raise ValueError(f"expected (B, C, T, H, W), got shape {tuple(video.shape)}")
    if video.shape[1] == 3:
        return region_complexity(video, grid, geometry=geometry)
    return latent_complexity(video, grid)


def allocate(
    video: torch.Tensor,
    grid: tuple[int, int, int],
    rho: float | None = None,
    thresholds: tuple[float, float] | None = None,
    temporal_weight: float = 1.0,
    geometry: Geometry | None = None,
) -> Allocation:
    """The CAT allocation for a clip on the transformer's (F', H', W') patch grid.

    `video`: a pixel clip (B, 3, T, H, W) in [-1, 1] (or uint8 0..255) with T = 1 + 4(F'-1),
    H = cell_px H', W = cell_px W' (the model family's `geometry`; None = the default family's:
    Wan2.1, T = 1 + 4(F'-1), 16-px cells); or a latent (B, C, F', 2H', 2W') with C != 3 (the 16-channel noisy or
    predicted clean latent during inference), read by `latent_complexity`. Exactly one of `rho`
    (keep ratio) or `thresholds` (spatial, temporal; pixel thresholds are in luma units 0..255,
    latent ones in latent units). With B > 1 the batch shares one partition (max complexity
    over the samples); call once per sample for per-sample allocations."""
    return allocate_from_complexity(
        complexity_of(video, grid, geometry), rho=rho, thresholds=thresholds, temporal_weight=temporal_weight
    )
