"""Spatial and temporal complexity of a clip, per clip (ITU-T P.910 SI/TI) and per patch-grid cell.

The allocation coarsens the simplest regions first, so it needs one spatial and one temporal
number per cell of the transformer's (F', H', W') patch grid. A cell is `geometry.cell_px`
pixels square (VAE stride x spatial patch; 16 for Wan2.1) over the pixel frames that latent frame
f encodes (`geometry.frames_of_latent`: frame 0 for f = 0, then groups of `vae_t`). The geometry
comes from the model family (`core.models`); None = the default family's.

Definitions (luma Y on the 0..255 scale, BT.601 weights):
- clip SI = max over frames of std(Sobel magnitude of Y), the 1-pixel border left out;
- clip TI = max over frames n >= 1 of std(Y_n - Y_{n-1}); 0 for a single frame.
  Both match siti-tools' `SiTiCalculator.si` / `.ti` (the P.910 reference) on the same luma.

Per cell the maps measure what pooling loses (the allocation coarsens where it loses least;
docs/cat.md says why this replaced per-cell SI/TI):
- cell spatial = max over the cell's frames of std(Y) over the cell's pixels: the RMS error of
  replacing the cell by its mean, which is what a coarse token's pooled content does to it
  (`spatial_frames="last"`: on the last frame 4f only);
- cell temporal = the range (max - min) of the cell's mean luma over frames 4f-4..4f (the latent
  frame's own frames and the one before); 0 for latent frame 0 (the conditioning frame has no
  predecessor). A spatio-temporal token of frames (f, f+1) averages the cell means of its 8 pixel
  frames; the RMS error that adds is their std <= half their range <= half the sum of the two
  windows' ranges (the windows overlap at frame 4f and cover all 8) <= the larger of the two.
Both are luma units, so one threshold scale serves both.

Everything runs in float32 torch, one latent frame at a time, so a 33-frame UHD clip never
holds more than a few frames of temporaries. For speed on large frames `region_complexity`
samples luma every `downsample`-th pixel (auto: 1 up to 720p, 2 for 1080p, 4 for UHD); the
statistics are then estimated from those samples (a cell spans 16/downsample samples).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from core.models import Geometry, get_family

BT601 = (0.299, 0.587, 0.114)


@dataclass
class Complexity:
    """Per-cell complexity maps, each (B, F', H', W'), float32. `spatial_ref` (optional): the
    spatial map of the clip minus its reference frame (the conditioning image), i.e. what pooling
    loses when a coarse token restores the reference's sub-token detail (0 wherever the cell is
    static); None when there is no reference."""

    spatial: torch.Tensor
    temporal: torch.Tensor
    spatial_ref: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.spatial.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> Complexity:
        ref = None if self.spatial_ref is None else self.spatial_ref.to(device)
        return Complexity(self.spatial.to(device), self.temporal.to(device), ref)


def luma(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) RGB in [-1, 1] (float) or 0..255 (uint8) -> (B, T, H, W) float32 luma on 0..255."""
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, T, H, W) RGB clip, got shape {tuple(video.shape)}")
    if video.dtype == torch.uint8:
        rgb = video.float()
        return BT601[0] * rgb[:, 0] + BT601[1] * rgb[:, 1] + BT601[2] * rgb[:, 2]
    rgb = video.float()
    # (x + 1) * 127.5 per channel; the weights sum to 1 so the offset is added once.
    y = (BT601[0] * 127.5) * rgb[:, 0] + (BT601[1] * 127.5) * rgb[:, 1]
    y.add_(rgb[:, 2], alpha=BT601[2] * 127.5).add_(127.5)
    return y


def sobel_magnitude(y: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of (..., H, W) images over the valid window -> (..., H-2, W-2).

    Same operator as `scipy.ndimage.sobel` along both axes followed by hypot, cropped to the
    interior (what siti-tools does)."""
    dx = y[..., :, 2:] - y[..., :, :-2]  # derivative along W, full H
    gx = dx[..., :-2, :] + dx[..., 2:, :]
    gx.add_(dx[..., 1:-1, :], alpha=2)
    del dx
    dy = y[..., 2:, :] - y[..., :-2, :]  # derivative along H, full W
    gy = dy[..., :, :-2] + dy[..., :, 2:]
    gy.add_(dy[..., :, 1:-1], alpha=2)
    del dy
    return torch.hypot(gx, gy, out=gx)


def _std_all(x: torch.Tensor) -> torch.Tensor:
    """Population std over the last two dims (numpy's default ddof=0)."""
    return x.flatten(-2).std(dim=-1, correction=0)


def _luma_chunks(video: torch.Tensor, chunk: int) -> Iterator[tuple[int, torch.Tensor]]:
    for t0 in range(0, video.shape[2], chunk):
        yield t0, luma(video[:, :, t0 : t0 + chunk])


@torch.no_grad()
def clip_si_ti(video: torch.Tensor, chunk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """ITU-T P.910 SI and TI per clip: two (B,) float32 tensors (see the module docstring).

    `video` is (B, 3, T, H, W), float in [-1, 1] or uint8 in 0..255; frames are read `chunk`
    at a time to bound memory."""
    b = video.shape[0]
    si = torch.zeros(b, device=video.device)
    ti = torch.zeros(b, device=video.device)
    prev: torch.Tensor | None = None
    for _, y in _luma_chunks(video, chunk):
        si = torch.maximum(si, _std_all(sobel_magnitude(y)).amax(dim=1))
        seq = y if prev is None else torch.cat([prev, y], dim=1)
        if seq.shape[1] > 1:
            ti = torch.maximum(ti, _std_all(seq[:, 1:] - seq[:, :-1]).amax(dim=1))
        prev = y[:, -1:]
    return si, ti


def cell_mean_std(x: torch.Tensor, cell: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) -> per cell (N, H/cell, W/cell): the mean, and the population std (the RMS error of
    replacing the cell by that mean). Centred before squaring: float32 E[x^2] - E[x]^2 on luma ~128
    would leave ~0.05 of rounding in a flat cell's std, the size of the thresholds that matter."""
    n, h, w = x.shape
    blocks = x.reshape(n, h // cell, cell, w // cell, cell)
    mean = blocks.mean(dim=(2, 4), keepdim=True)
    std = (blocks - mean).square_().mean(dim=(2, 4)).sqrt_()
    return mean.view(n, h // cell, w // cell), std


def geometry_or_default(geometry: Geometry | None) -> Geometry:
    """The given model geometry, or the default model family's."""
    return get_family().geometry if geometry is None else geometry


def frames_of_latent(f: int, geometry: Geometry | None = None) -> range:
    """Pixel frames encoded by latent frame f (causal VAE: frame 0 alone, then groups of vae_t)."""
    return geometry_or_default(geometry).frames_of_latent(f)


def auto_downsample(
    height: int, width: int, min_cell_px: int = 4, max_pixels: int = 1 << 20, geometry: Geometry | None = None
) -> int:
    """Largest power of 2 (cells kept >= `min_cell_px` px) that brings a frame to <= `max_pixels`.

    With 16-px cells: 1 up to 720p, 2 for 1080p, 4 for UHD (3840x2160 -> 960x540, 4x4 samples per cell)."""
    cell_px = geometry_or_default(geometry).cell_px
    s = 1
    while height * width / (s * s) > max_pixels and cell_px // (2 * s) >= min_cell_px:
        s *= 2
    return s


def check_grid(video: torch.Tensor, grid: tuple[int, int, int], geometry: Geometry | None = None, scale: int = 1) -> None:
    g = geometry_or_default(geometry)
    _, _, t, h, w = video.shape
    frames, height, width = g.pixel_shape(tuple(grid))
    want = (frames, height * scale, width * scale)
    if (t, h, w) != want:
        raise ValueError(
            f"clip of {t} frames at {h}x{w} does not match patch grid {tuple(grid)}"
            + (f" at scale {scale}" if scale != 1 else "")
            + f": expected {want[0]} frames at {want[1]}x{want[2]} "
            f"(T = 1 + {g.vae_t}(F'-1), H = {g.cell_px * scale} H', W = {g.cell_px * scale} W')"
        )


@torch.no_grad()
def region_complexity(
    video: torch.Tensor,
    grid: tuple[int, int, int],
    downsample: int | None = None,
    spatial_frames: str = "all",
    geometry: Geometry | None = None,
    scale: int = 1,
    reference: bool = False,
) -> Complexity:
    """Per-cell spatial and temporal complexity of a pixel clip (see the module docstring).

    `video`: (B, 3, T, H, W), float in [-1, 1] or uint8; `grid`: the transformer's (F', H', W')
    patch grid for it. `scale` k: the clip is k times the grid's pixel size (a full-resolution
    source of a smaller generation), each cell's statistics taken over its k-times-larger footprint.
    Two economies keep UHD fast, both documented in docs/cat.md:
    - `downsample` s: luma is sampled every s-th pixel in H and W (None = `auto_downsample`: 1 up
      to 720p, 2 for 1080p, 4 for UHD); the cell's mean and std are estimated from the samples;
    - `spatial_frames="last"` reads spatial complexity on the last pixel frame of each latent
      frame only (within 4 consecutive frames content differs by motion, which the temporal map
      measures). Default "all": max over the frames.
    Temporal complexity uses the cell means of every pixel frame. `geometry`: the model family's
    (None = the default's). `reference=True` (image-to-video: frame 0 is the conditioning image)
    also fills `spatial_ref`: the same statistic on Y_t - Y_0, what a coarse token that restores
    the reference frame's sub-token detail loses (0 on latent frame 0 and wherever nothing moved)."""
    if spatial_frames not in ("all", "last"):
        raise ValueError(f"spatial_frames={spatial_frames!r}; choose 'all' or 'last'")
    if int(scale) < 1:
        raise ValueError(f"scale={scale} must be a positive integer")
    geometry = geometry_or_default(geometry)
    check_grid(video, grid, geometry, int(scale))
    f_, h_, w_ = grid
    s = auto_downsample(video.shape[3], video.shape[4], geometry=geometry) if downsample is None else int(downsample)
    cell_px = geometry.cell_px * int(scale)
    if s < 1 or cell_px % s:
        raise ValueError(f"downsample={s} must be a positive integer dividing the cell size {cell_px}")
    cell = cell_px // s
    b = video.shape[0]
    spatial = torch.zeros(b, f_, h_, w_, device=video.device)
    temporal = torch.zeros(b, f_, h_, w_, device=video.device)
    spatial_ref = torch.zeros(b, f_, h_, w_, device=video.device) if reference else None
    y_ref = luma(video[:, :, :1, ::s, ::s]) if reference else None  # (B, 1, H/s, W/s)
    prev: torch.Tensor | None = None  # cell means of the previous pixel frame
    for f in range(f_):
        frames = geometry.frames_of_latent(f)
        y = luma(video[:, :, frames.start : frames.stop, ::s, ::s])  # (B, n, H/s, W/s)
        n = y.shape[1]
        mean, std = cell_mean_std(y.flatten(0, 1), cell)
        mean, std = mean.view(b, n, h_, w_), std.view(b, n, h_, w_)
        spatial[:, f] = std[:, -1] if spatial_frames == "last" else std.amax(dim=1)
        if spatial_ref is not None and f > 0:
            _, std_ref = cell_mean_std((y - y_ref).flatten(0, 1), cell)
            std_ref = std_ref.view(b, n, h_, w_)
            spatial_ref[:, f] = std_ref[:, -1] if spatial_frames == "last" else std_ref.amax(dim=1)
        if prev is not None:
            window = torch.cat([prev, mean], dim=1)
            temporal[:, f] = window.amax(dim=1) - window.amin(dim=1)
        prev = mean[:, -1:]
    return Complexity(spatial, temporal, spatial_ref)


def sobel_magnitude_same(y: torch.Tensor) -> torch.Tensor:
    """Sobel magnitude of (N, H, W) with replicated borders -> (N, H, W); the interior equals
    `sobel_magnitude` (borders replicate the nearest interior row/column of the image)."""
    padded = F.pad(y.unsqueeze(1), (1, 1, 1, 1), mode="replicate").squeeze(1)
    return sobel_magnitude(padded)


@torch.no_grad()
def latent_complexity(
    latents: torch.Tensor, grid: tuple[int, int, int] | None = None, reference: torch.Tensor | None = None
) -> Complexity:
    """Per-cell complexity from a latent (B, C, F', 2H', 2W'): the noisy latent, or better the
    model's predicted clean latent during denoising. Pass the 16 latent channels, not the
    36-channel model input (its mask/condition channels would dilute the statistics).

    A cell is only 2x2 latent pixels, too few for a std, so the latent measures are energies:
    spatial = mean over the cell of the Sobel magnitude (RMS over channels, borders replicated);
    temporal = RMS over the cell and channels of z_f - z_{f-1} (0 for f = 0). They rank regions
    like the pixel measures but live on the latent scale: use `rho` mode with them, or
    thresholds calibrated on latents. `reference` (B|1, C, F'|1, 2H', 2W'), the conditioning image's
    clean latent (best held still over the clip: `ModelFamily.still_latent`): also fills
    `spatial_ref`, the spatial measure of latents - reference."""
    if latents.ndim != 5:
        raise ValueError(f"expected latents (B, C, F', H, W), got shape {tuple(latents.shape)}")
    b, c, f_, h, w = latents.shape
    grid = grid or (f_, h // 2, w // 2)
    if (f_, h, w) != (grid[0], 2 * grid[1], 2 * grid[2]):
        raise ValueError(f"latent of shape {tuple(latents.shape)} does not match patch grid {tuple(grid)}")
    z = latents.float()

    def spatial_of(x: torch.Tensor) -> torch.Tensor:
        planes = x.permute(0, 2, 1, 3, 4).reshape(b * f_ * c, h, w)
        energy = sobel_magnitude_same(planes).square().view(b, f_, c, h, w).mean(dim=2)
        return F.avg_pool2d(energy.sqrt().view(b * f_, 1, h, w), 2).view(b, f_, grid[1], grid[2])

    spatial = spatial_of(z)
    spatial_ref = None
    if reference is not None:
        if (reference.ndim != 5 or reference.shape[0] not in (1, b) or reference.shape[1] != c
                or reference.shape[2] not in (1, f_) or tuple(reference.shape[3:]) != (h, w)):
            raise ValueError(f"reference latent of shape {tuple(reference.shape)} does not match {(b, c, f_, h, w)} "
                             "(or one frame of it)")
        spatial_ref = spatial_of(z - reference.to(z.device, torch.float32))
    temporal = torch.zeros_like(spatial)
    if f_ > 1:
        d2 = (z[:, :, 1:] - z[:, :, :-1]).pow(2).mean(dim=1)  # (B, F'-1, h, w)
        temporal[:, 1:] = F.avg_pool2d(d2.reshape(b * (f_ - 1), 1, h, w), 2).sqrt().view(b, f_ - 1, grid[1], grid[2])
    return Complexity(spatial, temporal, spatial_ref)
