"""The A/B benchmark set: clips with a redundancy level, read at the run's size.

By default the synthetic 3x3 SI/TI grid of `data.synth` (made at the run's size); otherwise any
folder of clips (UVG-style 4K sequences): its `grid.json` gives levels, or each clip's ITU-T
P.910 SI/TI is measured and banded with the grid's fixed bands. A clip that cannot be used is
reported with its reason, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.schema import ABConfig
from data.video import VIDEO_EXTENSIONS, ScaledReader, probe


@dataclass
class BenchClip:
    path: str
    level: str
    si: float | None = None
    ti: float | None = None
    prompt: str | None = None


def synthetic_grid(cfg: ABConfig, folder: Path) -> Path:
    """The 3x3 SI/TI grid at the run's size (reused when already there)."""
    from data.synth.grid import make_redundancy_grid

    manifest = folder / "grid.json"
    if manifest.is_file():
        clips = json.loads(manifest.read_text()).get("clips", [])
        if clips and all(
            (c.get("height"), c.get("width"), c.get("frames")) == (cfg.height, cfg.width, cfg.num_frames) for c in clips
        ):
            return manifest
    return make_redundancy_grid(folder, height=cfg.height, width=cfg.width, frames=cfg.num_frames, fps=cfg.fps,
                                seed=cfg.grid_seed)


def _from_manifest(manifest: Path) -> list[BenchClip]:
    clips = json.loads(manifest.read_text())["clips"]
    return [
        BenchClip(str((manifest.parent / c["path"]).resolve()), c.get("level", "unlabelled"), c.get("si"), c.get("ti"),
                  c.get("prompt"))
        for c in clips
    ]


def _measured_level(path: Path, num_frames: int) -> BenchClip:
    """Level of an unlabelled clip from its P.910 SI/TI over the frames the run uses."""
    from cat.complexity import clip_si_ti
    from data.synth.grid import SI_BANDS, TI_BANDS, band_of, level_name

    frames = read_frames(path, num_frames)
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).unsqueeze(0)
    si, ti = (float(x[0]) for x in clip_si_ti(video))
    return BenchClip(str(path.resolve()), level_name(band_of(si, SI_BANDS), band_of(ti, TI_BANDS)), si, ti)


def list_clips(cfg: ABConfig, work_dir: Path) -> tuple[list[BenchClip], list[dict]]:
    """The clips of the benchmark set, and the rejected ones with their reasons."""
    rejected: list[dict] = []
    if cfg.clips_dir is None:
        clips = _from_manifest(synthetic_grid(cfg, work_dir / "grid"))
    else:
        folder = Path(cfg.clips_dir).expanduser()
        if not folder.is_dir():
            from core.config import ConfigError

            raise ConfigError(f"clips_dir '{folder}' is not a folder of clips")
        manifest = folder / "grid.json"
        if manifest.is_file():
            clips = _from_manifest(manifest)
        else:
            clips = []
            for path in sorted(p for p in folder.iterdir() if p.is_file() or p.is_symlink()):  # dangling links: rejected
                if path.suffix.lower() not in VIDEO_EXTENSIONS:
                    if path.suffix.lower() not in (".json", ".png", ".jpg", ".txt", ".md"):
                        rejected.append({"path": str(path), "reason": f"not a video file ({path.suffix or 'no extension'})"})
                    continue
                try:
                    clips.append(_measured_level(path, cfg.num_frames))
                except Exception as exc:  # one bad clip must not sink the benchmark
                    rejected.append({"path": str(path), "reason": _reason(exc)})
    if cfg.levels:
        clips = [c for c in clips if c.level in cfg.levels]
    if cfg.max_clips:
        clips = clips[: cfg.max_clips]
    return clips, rejected


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def read_frames(path: str | Path, num_frames: int, height: int | None = None, width: int | None = None) -> np.ndarray:
    """The first `num_frames` frames (T, H, W, 3) uint8, optionally decoded at a size that covers
    (height, width) with the clip's aspect kept (crop with `fit`). Read by data.video (decord, PyAV
    where decord fails); VideoError names both decoders' reasons when neither can."""
    info = probe(path)
    if info.num_frames < num_frames:
        raise ValueError(f"clip has {info.num_frames} frames, the run needs {num_frames}")
    src_h, src_w = info.height, info.width
    size = (src_h, src_w)
    if height is not None and width is not None and size != (height, width):
        scale = max(height / src_h, width / src_w)
        size = (max(height, round(src_h * scale)), max(width, round(src_w * scale)))
    reader = ScaledReader(Path(path), (src_h, src_w), size)
    try:
        return reader.read(np.arange(num_frames))
    finally:
        reader.close()


def fit(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, 3, T, height, width) in [-1, 1]: resize to cover, centre crop."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()  # (3, T, H, W)
    _, _, h, w = video.shape
    if (h, w) != (height, width):
        scale = max(height / h, width / w)
        size = (max(height, round(h * scale)), max(width, round(w * scale)))
        if size != (h, w):
            video = torch.nn.functional.interpolate(video, size=size, mode="bilinear", antialias=True,
                                                    align_corners=False)
        top, left = (video.shape[2] - height) // 2, (video.shape[3] - width) // 2
        video = video[:, :, top : top + height, left : left + width]
    return (video / 127.5 - 1.0).clamp(-1, 1).unsqueeze(0)


def load_clip(clip: BenchClip, num_frames: int, height: int, width: int) -> torch.Tensor:
    """The reference clip (1, 3, T, H, W) in [-1, 1] at the run's size."""
    return fit(read_frames(clip.path, num_frames, height, width), height, width)
