"""The quality bound's pixel map, its content-blind control, and allocations read at full resolution.

What an allocation alone gives up, with the model taken out: under a perfect denoiser the
corrected CAT sampler converges to the clean latent with every coarse token's region replaced by
its pooled content, upsampled as the unpack does (nearest: pooled patch entry (dh, dw) fills cell
(dh, dw)); fine regions are unchanged. Mapped to pixels (Wan VAE: latent frame 0 = pixel frame 0,
latent frame j >= 1 = pixel frames 4j-3..4j; a latent pixel = 8x8 image pixels, so a cell of 2x2
latent pixels = 16x16 image pixels):

- fine cell: unchanged;
- coarse spatial token (2x2 cells of one latent frame): each 16x16-px cell of each of that latent
  frame's pixel frames (1 for frame 0, else 4) replaced by its mean over those 16x16 pixels;
- coarse spatio-temporal token (2x2 cells x latent frames (j, j+1), j odd): each 16x16-px cell
  replaced by its mean over the 16x16 pixels and all 8 pixel frames 4j-3..4j+4;
- latent frame 0 (pixel frame 0) is never merged in time, only spatially;
- reference detail (`allocation.detail`, image-to-video: pixel frame 0 is the conditioning image,
  the reference): a detail-flagged coarse cell becomes the pooled content above plus the reference's
  sub-token detail, per RGB channel and pixel, in every pixel frame t it covers:
  spatial: cellmean(frame t) + (frame0 - cellmean(frame0));
  spatio-temporal: pairmean(8 frames) + (frame0 - cellmean(frame0)).
  The pixel reading of the unpack's U(P(x0)) + R(ref), R(ref) = ref - U(P(ref)): exact on any static
  region whatever its texture (frame t = frame0 there), and on pixel frame 0 itself.

The map treats the VAE as linear (a mean of latents decodes to the mean of the pixels); it is the
honest pixel-space reading of the latent operation, not a decode.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation, allocate_from_complexity, temporal_pairs
from cat.complexity import Complexity, geometry_or_default, region_complexity
from core.models import Geometry


def _check(video: torch.Tensor, grid: tuple[int, int, int], geometry: Geometry) -> None:
    want = (3, *geometry.pixel_shape(grid))
    if video.ndim != 4 or tuple(video.shape) != want:
        raise ValueError(f"clip of shape {tuple(video.shape)} does not match patch grid {grid}: expected {want}")


def _cells_to_pixels(x: torch.Tensor, cell_px: int) -> torch.Tensor:
    return x.repeat_interleave(cell_px, -2).repeat_interleave(cell_px, -1)


@torch.no_grad()
def bound_clip(video: torch.Tensor, allocation: Allocation, geometry: Geometry | None = None) -> torch.Tensor:
    """The clip (3, T, H, W) a perfect model reaches under `allocation` (module docstring): fine
    cells unchanged, coarse cells replaced by their cell-px (and, spatio-temporal, 2-latent-frame)
    means, plus pixel frame 0's sub-cell detail where the allocation flags `detail`. `geometry`: the
    model family's (None = the default family's). Integer clips come back rounded and clamped."""
    geometry = geometry_or_default(geometry)
    cell_px, frames_of_latent = geometry.cell_px, geometry.frames_of_latent
    _check(video, allocation.grid, geometry)
    cells = allocation.cell_levels()  # (F', H', W')
    detail = allocation.cell_detail()  # (F', H', W') bool
    src = video.float()
    out = src.clone()
    means = F.avg_pool2d(src.permute(1, 0, 2, 3), cell_px)  # (T, 3, H', W') per-frame cell means
    ref_detail = src[:, 0] - _cells_to_pixels(means[0], cell_px)  # (3, H, W): frame0 - cellmean(frame0)

    def put(t: int, level_mask: torch.Tensor, detail_mask: torch.Tensor, pooled: torch.Tensor) -> None:
        value = _cells_to_pixels(pooled, cell_px) + ref_detail * _cells_to_pixels(detail_mask, cell_px)
        out[:, t] = torch.where(_cells_to_pixels(level_mask, cell_px), value, out[:, t])

    for f in range(allocation.grid[0]):
        mask = cells[f] == SPATIAL
        if mask.any():
            for t in frames_of_latent(f):
                put(t, mask, detail[f], means[t])
    for a, b in temporal_pairs(allocation.grid[0]):
        mask = cells[a] == SPATIOTEMPORAL
        if mask.any():
            frames = list(frames_of_latent(a)) + list(frames_of_latent(b))  # 8 pixel frames
            pair_mean = means[frames].mean(dim=0)
            for t in frames:
                put(t, mask, detail[a], pair_mean)
    if video.dtype.is_floating_point:
        return out.to(video.dtype)
    info = torch.iinfo(video.dtype)
    return out.round().clamp(info.min, info.max).to(video.dtype)


def _evenly(total: int, count: int) -> torch.Tensor:
    """`count` distinct indices spread evenly over range(total) (centres of equal strides)."""
    if count > total:
        raise ValueError(f"cannot place {count} tokens in {total} slots")
    return torch.tensor([int((i + 0.5) * total / count) for i in range(count)], dtype=torch.long)


def blind_allocation(allocation: Allocation) -> Allocation:
    """A content-blind allocation with the same numbers of coarse spatial and spatio-temporal tokens
    (so the same token count and cost), placed on a fixed regular pattern: spatio-temporal tokens
    evenly spread over the (pair, block) slots in raster order, then spatial tokens evenly spread over
    the (frame, block) slots left fine. Plain pooling everywhere (detail all False): choosing between
    the plain and the reference-detail unpack reads the content too. It answers: does reading the
    content (where to coarsen, and how to unpack) matter?"""
    counts = allocation.counts()
    f_, h_, w_ = allocation.grid
    bh, bw = h_ // 2, w_ // 2
    pairs = temporal_pairs(f_)
    levels = torch.zeros(f_, bh * bw, dtype=torch.int8)
    for slot in _evenly(len(pairs) * bh * bw, counts["spatiotemporal"]).tolist():
        p, block = divmod(slot, bh * bw)
        levels[pairs[p][0], block] = levels[pairs[p][1], block] = SPATIOTEMPORAL
    free = torch.nonzero(levels.flatten() == 0).flatten()
    levels.view(-1)[free[_evenly(len(free), counts["spatial"])]] = SPATIAL
    return Allocation(allocation.grid, levels.view(f_, bh, bw), {"mode": "blind", "matches": allocation.info})


def integer_factor(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> int | None:
    """k when covering (dst) from (src) is an exact k-times downscale (1/k scale), else None."""
    scale = max(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    k = round(1.0 / scale)
    return k if k >= 2 and abs(1.0 / scale - k) < 1e-9 else None


@torch.no_grad()
def full_resolution_complexity(
    frames: np.ndarray, size: tuple[int, int], grid: tuple[int, int, int], reference: bool = True
) -> Complexity | None:
    """Per-cell complexity on the generation grid read from full-resolution frames (T, Hs, Ws, 3)
    uint8, or None when the generation frame is not an exact k-times downscale of a centre crop.

    The crop that the generation frame shows (same centre crop as `infer.clips.fit`) is measured at
    full resolution: each generation cell's statistics over its 16k x 16k-px footprint
    (`cat.region_complexity(..., scale=k)`, which samples UHD every 4th pixel). Texture finer than
    a generation pixel counts here although the downscaled clip no longer shows it, so these maps
    read at least as complex as the generation-size ones (a more cautious allocation).
    `reference` (image-to-video): also fill `spatial_ref` against the crop's first frame, the
    conditioning image."""
    src_h, src_w = frames.shape[1:3]
    k = integer_factor((src_h, src_w), size)
    if k is None:
        return None
    h, w = size
    top = (round(src_h / k) - h) // 2 * k
    left = (round(src_w / k) - w) // 2 * k
    crop = torch.from_numpy(frames[:, top : top + k * h, left : left + k * w]).permute(3, 0, 1, 2).unsqueeze(0)
    return region_complexity(crop, grid, scale=k, reference=reference)


def make_allocation(complexity: Complexity, budget: dict) -> Allocation:
    """`cat`'s allocation for one budget: {"rho": r} or {"thresholds": [s, t]}."""
    if budget.get("rho") is not None:
        return allocate_from_complexity(complexity, rho=float(budget["rho"]))
    return allocate_from_complexity(complexity, thresholds=tuple(budget["thresholds"]))
