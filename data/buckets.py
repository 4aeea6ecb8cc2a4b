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

from core.schema import resolution_base

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


def _round16(x: float) -> int:
    return max(SIZE_MULTIPLE, int(round(x / SIZE_MULTIPLE)) * SIZE_MULTIPLE)


def make_buckets(resolution: str, aspect_ratios: list[float]) -> list[Bucket]:
    """One bucket per aspect ratio (width/height) at the preset's area; the preset's own shape stays exact."""
    base_h, base_w = resolution_base(resolution)
    area = base_h * base_w
    buckets: list[Bucket] = []
    for ratio in aspect_ratios:
        if abs(math.log(ratio * base_h / base_w)) < 0.05:
            bucket = Bucket(base_h, base_w)
        elif abs(math.log(ratio * base_w / base_h)) < 0.05:
            bucket = Bucket(base_w, base_h)
        else:
            bucket = Bucket(_round16(math.sqrt(area / ratio)), _round16(math.sqrt(area * ratio)))
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


def resize_crop(frames: np.ndarray | torch.Tensor, bucket: Bucket, chunk: int = 8) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, h, w) uint8 at the bucket size: antialiased bilinear cover-scale,
    then centre crop. Works `chunk` frames at a time so UHD input stays within memory."""
    video = torch.as_tensor(frames)
    t, h, w, _ = video.shape
    scale = upscale_needed(h, w, bucket)
    new_h, new_w = max(bucket.height, round(h * scale)), max(bucket.width, round(w * scale))
    top, left = (new_h - bucket.height) // 2, (new_w - bucket.width) // 2
    out = torch.empty(3, t, bucket.height, bucket.width, dtype=torch.uint8)
    for t0 in range(0, t, chunk):
        x = video[t0 : t0 + chunk].permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        x = x[:, :, top : top + bucket.height, left : left + bucket.width]
        out[:, t0 : t0 + chunk] = x.round_().clamp_(0, 255).to(torch.uint8).permute(1, 0, 2, 3)
    return out


def to_model_range(video: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, T, H, W) -> float32 in [-1, 1], what core.wan's encoders take."""
    return video.float().div_(127.5).sub_(1.0)
