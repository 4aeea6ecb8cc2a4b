"""Resolution buckets and the resize + centre-crop that maps a clip onto one.

A bucket keeps the preset's pixel area for each aspect ratio (sizes rounded to multiples of 16,
as Wan's 8x VAE and 2x2 patches need), so 480p landscape is 480x832 as Wan was trained and a
portrait clip gets a portrait bucket instead of a thin crop. A clip goes to the bucket nearest
in log aspect ratio, is scaled to cover it and centre-cropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from core.checks import resolution_base

SIZE_MULTIPLE = 16


@dataclass(frozen=True)
class Bucket:
    height: int
    width: int

    @property
    def name(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def aspect(self) -> float:
        return self.width / self.height


def _round16(x: float, multiple: int = SIZE_MULTIPLE) -> int:
    return max(multiple, int(round(x / multiple)) * multiple)


def make_buckets(resolution: str, aspect_ratios: list[float], multiple: int = SIZE_MULTIPLE) -> list[Bucket]:
    """One bucket per aspect ratio (width/height) at the preset's area; the preset's own shape stays exact
    when it is a multiple of `multiple` (the model family's patch-grid cell: 16 px Wan2.1, 32 px Wan2.2)."""
    base_h, base_w = resolution_base(resolution)
    area = base_h * base_w
    base_h, base_w = _round16(base_h, multiple), _round16(base_w, multiple)
    buckets: list[Bucket] = []
    for ratio in aspect_ratios:
        if abs(math.log(ratio * base_h / base_w)) < 0.05:
            bucket = Bucket(base_h, base_w)
        elif abs(math.log(ratio * base_w / base_h)) < 0.05:
            bucket = Bucket(base_w, base_h)
        else:
            bucket = Bucket(_round16(math.sqrt(area / ratio), multiple), _round16(math.sqrt(area * ratio), multiple))
        if bucket not in buckets:
            buckets.append(bucket)
    return buckets


def choose_bucket(height: int, width: int, buckets: list[Bucket]) -> Bucket:
    """The bucket nearest in log aspect ratio (the least cropping)."""
    aspect = width / height
    return min(buckets, key=lambda b: abs(math.log(b.aspect / aspect)))


def upscale_needed(height: int, width: int, bucket: Bucket) -> float:
    """Scale factor to cover the bucket (>1 means the clip is enlarged)."""
    return max(bucket.height / height, bucket.width / width)


def cover_size(height: int, width: int, bucket: Bucket) -> tuple[int, int]:
    """(height, width) a frame is scaled to so that it covers the bucket, aspect kept."""
    scale = upscale_needed(height, width, bucket)
    return max(bucket.height, round(height * scale)), max(bucket.width, round(width * scale))


SCALED_DECODE_BELOW = 0.5  # decode pre-scaled when the clip shrinks at least 2x per side (see data/bench.py)


def decode_size(height: int, width: int, bucket: Bucket) -> tuple[int, int]:
    """The size to decode a clip at: the bucket's cover size when that is a big reduction (FFmpeg's
    scaler while decoding then saves most of the full-size frame traffic, e.g. UHD -> 480p), else
    the source size (torch's uint8 resize is faster for mild reductions such as 720p -> 480p)."""
    if upscale_needed(height, width, bucket) <= SCALED_DECODE_BELOW:
        return cover_size(height, width, bucket)
    return height, width


def resize_crop(frames: np.ndarray | torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, h, w) uint8 at the bucket size: antialiased bilinear scale to cover
    the bucket, then centre crop. Frames already at the cover size (decoded pre-scaled, see
    `data.video.open_reader`) are only cropped. Runs on uint8 channels-last data, torch's fast path
    (about 5x faster than converting UHD frames to float first)."""
    video = torch.as_tensor(frames)
    _, h, w, _ = video.shape
    new_h, new_w = cover_size(h, w, bucket)
    x = video.permute(0, 3, 1, 2)  # (T, 3, H, W) view with channels-last memory
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - bucket.height) // 2, (new_w - bucket.width) // 2
    x = x[:, :, top : top + bucket.height, left : left + bucket.width]
    return x.permute(1, 0, 2, 3).contiguous()


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, T, H, W) -> float32 in [-1, 1], what the model family's encoders take."""
    return video.float().div_(127.5).sub_(1.0)
