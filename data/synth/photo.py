"""Real-texture clips without downloads: slow pans and zooms over scikit-image's bundled photographs.

Synthetic gradients and band-limited noise say little about how a perceptual metric treats real
texture (hair, fabric, foliage, printed text). scikit-image ships a few real photographs inside
its wheel (astronaut, coffee, chelsea, rocket, ...); moving a camera window over one gives a
deterministic real-texture clip for tests, docs and the quality bound. Motion is sub-pixel
(bilinear resampling), so consecutive frames differ the way a real camera move does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
MOTIONS = ("pan", "zoom", "static")


def photo(name: str) -> np.ndarray:
    """(H, W, 3) uint8 photograph bundled with scikit-image (no download)."""
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"photo '{name}' is not one of {PHOTOS}")
    return np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])


def photo_clip(name: str, height: int, width: int, frames: int, motion: str = "pan", speed: float = 1.0) -> np.ndarray:
    """(T, height, width, 3) uint8: a camera window over photograph `name`.

    The window covers 80% of the photo (aspect of height x width kept). `pan` moves it
    diagonally by `speed` output pixels per frame (a 1-px pan is already real motion: VMAF's
    motion feature and TI rise); `zoom` narrows it by `speed` % per frame about the centre;
    `static` holds it still."""
    if motion not in MOTIONS:
        raise ValueError(f"motion '{motion}' is not one of {MOTIONS}")
    if height < 8 or width < 8 or frames < 1:
        raise ValueError(f"clip size {width}x{height}x{frames} too small (need >= 8x8, >= 1 frame)")
    img = torch.from_numpy(photo(name)).permute(2, 0, 1).float().unsqueeze(0)  # (1, 3, H, W)
    ph, pw = img.shape[2:]
    # window size in photo pixels: 80% of the photo along the limiting side, output aspect kept
    win_h = 0.8 * min(ph, pw * height / width)
    win_w = win_h * width / height
    scale = win_h / height  # photo pixels per output pixel
    thetas = []
    mid = (frames - 1) / 2
    for t in range(frames):
        zoom = (1.0 - speed / 100.0) ** t if motion == "zoom" else 1.0
        shift = speed * (t - mid) * scale if motion == "pan" else 0.0  # photo pixels, diagonal
        cx, cy = pw / 2 + shift, ph / 2 + shift * height / width
        # affine_grid maps output [-1, 1] to input [-1, 1] (align_corners=False)
        thetas.append([[win_w * zoom / pw, 0.0, 2 * cx / pw - 1], [0.0, win_h * zoom / ph, 2 * cy / ph - 1]])
    theta = torch.tensor(thetas, dtype=torch.float32)
    grid = F.affine_grid(theta, [frames, 3, height, width], align_corners=False)
    src = img
    if scale > 1.5:  # prefilter when shrinking so the clip is not aliased
        factor = 1.0 / scale
        src = F.interpolate(img, scale_factor=factor * 1.0001, mode="bilinear", antialias=True, align_corners=False)
    out = F.grid_sample(
        src.expand(frames, -1, -1, -1), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return out.clamp_(0, 255).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def make_photo_clips(
    out_dir: str | Path,
    height: int = 144,
    width: int = 256,
    frames: int = 17,
    fps: int = 16,
    specs: list[tuple[str, str]] | None = None,
) -> Path:
    """Write photo clips as near-lossless mp4s plus a `grid.json` (levels from measured P.910 SI/TI,
    banded like the synthetic grid), so `infer.ab` / `infer.bound` read them as a clips folder."""
    from data.cache import write_json_atomic
    from data.synth.grid import CRF, SI_BANDS, TI_BANDS, band_of, level_name, measure
    from data.writer import decode_all, write_video

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = specs or [("astronaut", "pan"), ("coffee", "zoom"), ("chelsea", "static"), ("rocket", "pan")]
    clips = []
    for name, motion in specs:
        path = out / f"{name}_{motion}.mp4"
        write_video(photo_clip(name, height, width, frames, motion), path, fps=fps, crf=CRF)
        si, ti = measure(decode_all(path))
        clips.append(
            {
                "path": path.name,
                "level": level_name(band_of(si, SI_BANDS), band_of(ti, TI_BANDS)),
                "si": round(si, 3),
                "ti": round(ti, 3),
                "height": height,
                "width": width,
                "frames": frames,
                "fps": fps,
                "prompt": f"a photograph of {name}, camera {motion}",
                "source": f"skimage.data.{name}",
            }
        )
    path = out / "grid.json"
    write_json_atomic(path, {"clips": clips, "source": "scikit-image bundled photographs", "seed": None})
    return path


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float in [-1, 1] (the project's pixel range)."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


__all__ = ["MOTIONS", "PHOTOS", "clip_tensor", "make_photo_clips", "photo", "photo_clip"]
