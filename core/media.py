"""Video and image files: mp4 writing, contact sheets and the synthetic test frame, shared by data/, train/ and infer/."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.io import atomic_path


def to_uint8_frames(video: torch.Tensor | np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 from a (3, T, H, W) tensor in [-1, 1] or a (T, H, W, 3) array in [0, 1]/uint8."""
    if isinstance(video, torch.Tensor):
        arr = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
        return arr.permute(1, 2, 3, 0).cpu().numpy()
    if video.dtype == np.uint8:
        return video
    return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 16) -> Path:
    """Write (T, H, W, 3) uint8 frames as an H.264 mp4 (atomic: temp file, then rename)."""
    import imageio.v3 as iio

    path = Path(path)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, fps=fps, codec="libx264", plugin="pyav", out_pixel_format="yuv420p")
    return path


def synthetic_frame(height: int, width: int, index: int = 0) -> Image.Image:
    """A deterministic colour test frame (index shifts its phase): the conditioning image when none is given."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 1.3
    r = 0.5 + 0.5 * np.sin(x / max(width, 1) * 6.28 + phase)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / max(height + width, 1) * 12.0 + phase)
    return Image.fromarray((np.stack([r, g, b], -1) * 255).astype(np.uint8))


def contact_sheet(frames: np.ndarray, path: str | Path, columns: int = 8, max_frames: int = 16) -> Path:
    """A PNG grid of evenly spaced frames, for a glance without a video player."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idx = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    picked = frames[idx]
    cols = min(columns, len(picked))
    rows = -(-len(picked) // cols)
    h, w = picked.shape[1:3]
    sheet = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)
    for i, frame in enumerate(picked):
        r, c = divmod(i, cols)
        sheet[r * h : (r + 1) * h, c * w : (c + 1) * w] = frame
    Image.fromarray(sheet).save(path)
    return path
