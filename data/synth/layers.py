"""Vectorised building blocks of synthetic frames (torch, float32, values on the 0..255 scale).

Separable forms (outer products of 1-D profiles) keep a UHD frame to a few milliseconds of
work per layer: a Gaussian blob is exp(-x^2) exp(-y^2), a plane wave sin(ax + by - wt) is
expanded as sin(ax)cos(by - wt) + cos(ax)sin(by - wt).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one thread here, restoring the caller's setting after. Synthesis issues many
    mid-sized ops; on a busy machine each multi-threaded op waited ~150 ms for a descheduled
    worker thread (measured: 0.13 ms vs 146 ms per blob at 176x320), and x264 uses the other cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def coords(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates (y (H,), x (W,)) as float32."""
    return torch.arange(height, dtype=torch.float32) + 0.5, torch.arange(width, dtype=torch.float32) + 0.5


def gradient_background(
    height: int, width: int, top: tuple[float, float, float], bottom: tuple[float, float, float], tilt: float = 0.15
) -> torch.Tensor:
    """(3, H, W) smooth two-colour gradient (a sky, a wall): almost no Sobel energy at any size."""
    y, x = coords(height, width)
    v = (y / height).view(-1, 1) + tilt * (x / width - 0.5).view(1, -1)
    v = v.clamp(0, 1)
    top_t, bottom_t = torch.tensor(top).view(3, 1, 1), torch.tensor(bottom).view(3, 1, 1)
    return top_t + (bottom_t - top_t) * v.unsqueeze(0)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (H, W) with reflected borders."""
    k = gaussian_kernel(sigma)
    r = (len(k) - 1) // 2
    x = image.view(1, 1, *image.shape)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    return x[0, 0]


def texture(
    height: int,
    width: int,
    generator: torch.Generator,
    fine_sigma: float = 1.2,
    coarse_sigma: float = 6.0,
    coarse_weight: float = 0.5,
) -> torch.Tensor:
    """(H, W) zero-mean, unit-std band-limited noise (fine grain plus coarser mottling). Its
    features are sized in pixels, so its SI per unit amplitude is the same at every resolution."""
    fine = blur(torch.randn(height, width, generator=generator), fine_sigma)
    coarse = blur(torch.randn(height, width, generator=generator), coarse_sigma)
    t = fine / fine.std() + coarse_weight * coarse / coarse.std()
    return (t - t.mean()) / t.std()


def soft_box(height: int, width: int, box: tuple[float, float, float, float], softness: float) -> torch.Tensor:
    """(H, W) mask, 1 inside a box given in frame fractions (top, left, bottom, right), smooth edges."""
    y, x = coords(height, width)
    top, left, bottom, right = box
    s = softness * min(height, width)

    def ramp(v: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return torch.sigmoid((v - lo) / s) * torch.sigmoid((hi - v) / s)

    return ramp(y, top * height, bottom * height).view(-1, 1) * ramp(x, left * width, right * width).view(1, -1)


def blob(height: int, width: int, cy: float, cx: float, sigma: float) -> torch.Tensor:
    """(H, W) Gaussian bump of peak 1 centred at pixel (cy, cx): an outer product of two profiles."""
    y, x = coords(height, width)
    return torch.exp(-((y - cy) ** 2) / (2 * sigma**2)).view(-1, 1) * torch.exp(-((x - cx) ** 2) / (2 * sigma**2)).view(
        1, -1
    )


def add_blob(out: torch.Tensor, cy: float, cx: float, sigma: float, weight: float) -> None:
    """out (H, W) += weight * Gaussian bump, as one in-place rank-1 update (no (H, W) temporary)."""
    y, x = coords(*out.shape)
    out.addr_(torch.exp(-((y - cy) ** 2) / (2 * sigma**2)), torch.exp(-((x - cx) ** 2) / (2 * sigma**2)), alpha=weight)


def add_plane_wave(out: torch.Tensor, wavelength: float, angle: float, phase: float, weight: float) -> None:
    """out (H, W) += weight * sin(k . r - phase), as two in-place rank-1 updates."""
    y, x = coords(*out.shape)
    k = 2 * math.pi / wavelength
    ax, ay = k * math.cos(angle) * x, k * math.sin(angle) * y - phase
    out.addr_(torch.cos(ay), torch.sin(ax), alpha=weight).addr_(torch.sin(ay), torch.cos(ax), alpha=weight)
