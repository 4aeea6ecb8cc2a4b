"""The redundancy benchmark grid: 9 clips whose ITU-T P.910 SI and TI land in low/medium/high bands.

Each clip is a smooth gradient background plus two independent layers:
- a static band-limited texture (fine grain + mottling, sized in pixels) over none / a box /
  the whole frame: it sets SI (a static layer cancels out of frame differences, so not TI);
- a smooth motion layer (none / a few slow blobs in one region / fast blobs and travelling
  waves over the whole frame): it sets TI, and adds little Sobel energy because it is smooth.
The most redundant level (SI-low/TI-low) is the gradient alone: flat and perfectly static.

Band thresholds are fixed P.910 values (luma 0..255). The generator sizes its texture in
pixels and calibrates both amplitudes against the measured statistic at the requested size,
then encodes, decodes and measures again, so band membership holds at any resolution and is
asserted on every generation (UHD included), not assumed from a small-size test.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cat.complexity import clip_si_ti
from data.cache import write_json_atomic
from data.synth import layers
from data.writer import decode_all, write_video

LEVELS = ("low", "medium", "high")
SI_BANDS = {"low": (0.0, 15.0), "medium": (15.0, 45.0), "high": (45.0, math.inf)}
TI_BANDS = {"low": (0.0, 4.0), "medium": (4.0, 18.0), "high": (18.0, math.inf)}
SI_TARGET = {"medium": 28.0, "high": 68.0}  # low: no texture at all
TI_TARGET = {"medium": 10.0, "high": 32.0}  # low: nothing moves
CRF = 10  # near-transparent H.264: compression must not move SI/TI out of their bands
PRESET = "veryfast"
MAX_PASSES = 3
CALIBRATION_WIDTH = 640
MIN_LIGHT_SIGMA = 12.0  # pixels
MIN_WAVELENGTH = 64.0  # pixels

PROMPTS = {
    ("low", "low"): "a still smooth gradient wall, static camera",
    ("low", "medium"): "soft glowing lights drift slowly over a smooth wall",
    ("low", "high"): "waves of soft light sweep fast across a smooth wall",
    ("medium", "low"): "a still textured panel on a smooth wall, static camera",
    ("medium", "medium"): "soft lights drift slowly beside a textured panel",
    ("medium", "high"): "waves of light sweep fast over a textured panel",
    ("high", "low"): "a still richly textured surface, static camera",
    ("high", "medium"): "soft lights drift slowly over a richly textured surface",
    ("high", "high"): "waves of light sweep fast over a richly textured surface",
}


def band_of(value: float, bands: dict[str, tuple[float, float]]) -> str:
    return next(name for name, (lo, hi) in bands.items() if lo <= value < hi)


def level_name(si_band: str, ti_band: str) -> str:
    return f"SI-{si_band}/TI-{ti_band}"


@dataclass
class Scene:
    """One clip's layers; `frame(t, a_s, a_t)` composes frame t with texture and motion amplitudes."""

    height: int
    width: int
    frames: int
    background: torch.Tensor  # (3, H, W)
    texture: torch.Tensor  # (3, H, W): unit-std texture times its region mask, tinted
    motion: Callable[[int], torch.Tensor]  # t -> (3, H, W), unit amplitude

    def frame(self, t: int, a_s: float, a_t: float) -> torch.Tensor:
        out = self.background.clone()
        if a_s:
            out.add_(self.texture, alpha=a_s)
        if a_t:
            out.add_(self.motion(t), alpha=a_t)
        return out.clamp_(0, 255)

    def clip_uint8(self, a_s: float, a_t: float, frames: list[int] | None = None) -> Iterator[np.ndarray]:
        for t in frames if frames is not None else range(self.frames):
            yield self.frame(t, a_s, a_t).round_().to(torch.uint8).permute(1, 2, 0).numpy()


TEXTURE_TINT = torch.tensor([1.0, 0.96, 0.9]).view(3, 1, 1)


def _motion(ti_band: str, h: int, w: int, rng: np.random.Generator):
    """The unit-amplitude motion layer for a TI band: t -> (3, H, W).

    Soft lights that pulse and drift (medium: three, in the right half; high: six over the whole
    frame plus two fast travelling waves). Pulsing changes intensity without adding gradients, so
    TI rises while SI stays low even when the frame is small (translation alone would need
    ~8 px/frame per unit of TI/SI, since a moving edge's difference is speed times its gradient)."""
    if ti_band == "low":
        return lambda t: torch.zeros(3, h, w)
    side = min(h, w)
    fast = ti_band == "high"
    count = 6 if fast else 3
    # Sizes are frame fractions with a floor in pixels: on tiny frames (64 px) fractions alone give
    # gradients steep enough to push SI-low/TI-high out of its SI band.
    sigma = max((0.12 if fast else 0.15) * side, MIN_LIGHT_SIGMA)
    region = (0.0, 0.0, 1.0, 1.0) if fast else (0.2, 0.55, 0.8, 0.9)  # medium: right part only
    centres = [(rng.uniform(region[0], region[2]) * h, rng.uniform(region[1], region[3]) * w) for _ in range(count)]
    drift = (0.15 if fast else 0.05) * side  # radius of each light's slow circular path
    orbit = 2 * math.pi / 33  # one turn per 33 frames
    pulse = 2 * math.pi / (5 if fast else 6)  # intensity period in frames
    phases = rng.uniform(0, 2 * math.pi, count)
    colours = [rng.uniform(0.6, 1.0, 3).tolist() for _ in range(count)]
    waves = [(max(rng.uniform(0.35, 0.55) * side, MIN_WAVELENGTH), rng.uniform(0, math.pi)) for _ in range(2 * fast)]

    def motion(t: int) -> torch.Tensor:
        out = torch.zeros(3, h, w)
        for (cy, cx), phase, colour in zip(centres, phases, colours, strict=True):
            angle = phase + orbit * t
            strength = math.cos(phase + pulse * t)
            for c in range(3):
                layers.add_blob(
                    out[c], cy + drift * math.sin(angle), cx + drift * math.cos(angle), sigma, strength * colour[c]
                )
        if waves:
            grey = torch.zeros(h, w)
            for wavelength, direction in waves:
                layers.add_plane_wave(grey, wavelength, direction, t * math.pi / 2, 0.5)
            out.add_(grey)
        return out

    return motion


def build_scene(si_band: str, ti_band: str, height: int, width: int, frames: int, seed: int) -> Scene:
    """Deterministic layers of one grid level (seeded per level, so levels do not share noise)."""
    level_seed = seed * 1000 + LEVELS.index(si_band) * 10 + LEVELS.index(ti_band)
    rng = np.random.default_rng(level_seed)
    generator = torch.Generator().manual_seed(level_seed)
    top = tuple(rng.uniform(90, 150, 3).tolist())
    bottom = tuple(rng.uniform(110, 170, 3).tolist())
    background = layers.gradient_background(height, width, top, bottom)
    if si_band == "low":
        texture = torch.zeros(height, width)
    else:
        texture = layers.texture(height, width, generator)
        if si_band == "medium":  # texture on a panel covering about a third of the frame
            texture = texture * layers.soft_box(height, width, (0.2, 0.08, 0.8, 0.55), softness=0.01)
    texture = texture.unsqueeze(0) * TEXTURE_TINT
    return Scene(height, width, frames, background, texture, _motion(ti_band, height, width, rng))


def measure(frames: np.ndarray | list[np.ndarray]) -> tuple[float, float]:
    """P.910 SI and TI of (T, H, W, 3) uint8 frames, via cat.complexity (the project's one implementation)."""
    video = torch.from_numpy(np.ascontiguousarray(np.stack(frames) if isinstance(frames, list) else frames))
    si, ti = clip_si_ti(video.permute(3, 0, 1, 2).unsqueeze(0))
    return float(si[0]), float(ti[0])


def _unit_ti(scene: Scene) -> float:
    """TI of the motion layer alone at amplitude 1 (TI scales linearly with the amplitude), measured
    on consecutive frame pairs so a UHD clip is never held in memory as float."""
    best, prev = 0.0, None
    for t in range(scene.frames):
        cur = scene.motion(t).add_(128.0).div_(127.5).sub_(1.0)
        if prev is not None:
            best = max(best, float(clip_si_ti(torch.stack([prev, cur], dim=1).unsqueeze(0))[1][0]))
        prev = cur
    return best


def _sample_frames(total: int, count: int = 5) -> list[int]:
    return sorted({int(round(x)) for x in np.linspace(0, total - 1, min(count, total))})


def _fit_texture(scene: Scene, a_t: float, target: float, tolerance: float = 0.02) -> float:
    """Texture amplitude whose SI (on a few frames, motion included) hits `target`: secant steps
    from the linear guess (SI is nearly proportional to the amplitude once texture dominates)."""
    frames = _sample_frames(scene.frames)

    def si_at(amplitude: float) -> float:
        return measure(list(scene.clip_uint8(amplitude, a_t, frames)))[0]

    x0, y0 = 0.0, si_at(0.0)
    x1 = target / 2.0  # about 2 SI per unit amplitude for this texture
    y1 = si_at(x1)
    for _ in range(8):
        if abs(y1 - target) <= tolerance * target or y1 == y0:
            break
        x0, y0, x1 = x1, y1, max(0.0, x1 + (target - y1) * (x1 - x0) / (y1 - y0))
        y1 = si_at(x1)
    return x1


def calibrate(si_band: str, ti_band: str, height: int, width: int, frames: int, seed: int) -> tuple[float, float]:
    """(texture amplitude, motion amplitude) that put the raw frames at the band targets.

    Fitted on a copy of the scene at most CALIBRATION_WIDTH wide: the texture is sized in pixels
    and the motion layer in frame fractions, so both statistics carry over to the full size (the
    full-size clip is measured after encoding and re-aimed if needed)."""
    scale = min(1.0, CALIBRATION_WIDTH / width)
    h, w = max(32, round(height * scale / 2) * 2), max(32, round(width * scale / 2) * 2)
    scene = build_scene(si_band, ti_band, h, w, frames, seed)
    a_t = TI_TARGET[ti_band] / max(_unit_ti(scene), 1e-6) if ti_band != "low" else 0.0
    a_s = _fit_texture(scene, a_t, SI_TARGET[si_band]) if si_band != "low" else 0.0
    return a_s, a_t


def frames_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def make_clip(scene: Scene, si_band: str, ti_band: str, path: Path, fps: int, seed: int) -> dict:
    """Encode one level, decode it, measure it; re-aim amplitudes if compression moved it off target."""
    a_s, a_t = calibrate(si_band, ti_band, scene.height, scene.width, scene.frames, seed)
    si_lo, si_hi = SI_BANDS[si_band]
    ti_lo, ti_hi = TI_BANDS[ti_band]
    for attempt in range(MAX_PASSES):
        write_video(scene.clip_uint8(a_s, a_t), path, fps=fps, crf=CRF, preset=PRESET)
        decoded = decode_all(path)
        si, ti = measure(decoded)
        if si_lo <= si < si_hi and ti_lo <= ti < ti_hi:
            break
        if attempt + 1 == MAX_PASSES:
            raise RuntimeError(
                f"{level_name(si_band, ti_band)} at {scene.width}x{scene.height} measured SI {si:.1f} "
                f"TI {ti:.1f}, outside its bands SI [{si_lo}, {si_hi}) TI [{ti_lo}, {ti_hi})"
            )
        if si_band != "low":
            a_s *= SI_TARGET[si_band] / max(si, 1e-6)
        if ti_band != "low":
            a_t *= TI_TARGET[ti_band] / max(ti, 1e-6)
    from PIL import Image

    first = path.with_name(path.stem + "_first.png")
    Image.fromarray(decoded[0]).save(first, compress_level=1)
    return {
        "path": path.name,
        "first_frame": first.name,
        "level": level_name(si_band, ti_band),
        "si_band": si_band,
        "ti_band": ti_band,
        "si": round(si, 3),
        "ti": round(ti, 3),
        "height": scene.height,
        "width": scene.width,
        "frames": int(decoded.shape[0]),
        "fps": fps,
        "prompt": PROMPTS[(si_band, ti_band)],
        "texture_amplitude": round(a_s, 4),
        "motion_amplitude": round(a_t, 4),
        "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "frames_sha256": frames_digest(decoded),
    }


def make_redundancy_grid(
    out_dir: str | Path,
    height: int = 2160,
    width: int = 3840,
    frames: int = 33,
    fps: int = 16,
    seed: int = 0,
    progress: bool = True,
    levels: list[tuple[str, str]] | None = None,
) -> Path:
    """Write the 9 clips (3 SI bands x 3 TI bands), their first frames and `grid.json`; return its path.

    Paths in grid.json are relative to its folder (see `load_grid`). Raises if a clip misses its bands.
    `levels` restricts the grid to some (si_band, ti_band) pairs (each clip depends only on its level
    and the seed, so a subset is bit-identical to the same clips of the full grid)."""
    from tqdm import tqdm

    if height % 2 or width % 2 or height < 32 or width < 32:
        raise ValueError(f"grid size {width}x{height} must be even and at least 32x32 (H.264 4:2:0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clips = []
    levels = levels or [(s, t) for s in LEVELS for t in LEVELS]
    with layers.single_thread():
        for si_band, ti_band in tqdm(levels, desc="redundancy grid", unit="clip", disable=not progress):
            scene = build_scene(si_band, ti_band, height, width, frames, seed)
            name = f"SI-{si_band}_TI-{ti_band}.mp4"
            clips.append(make_clip(scene, si_band, ti_band, out / name, fps, seed))
    manifest = {
        "clips": clips,
        "bands": {
            "si": _bands_json(SI_BANDS),
            "ti": _bands_json(TI_BANDS),
            "measure": "ITU-T P.910 SI/TI on decoded luma (BT.601, 0..255), cat.complexity.clip_si_ti",
        },
        "seed": seed,
        "encoder": {"codec": "libx264", "crf": CRF, "preset": PRESET, "pix_fmt": "yuv420p"},
    }
    path = out / "grid.json"
    write_json_atomic(path, manifest)
    return path


def _bands_json(bands: dict[str, tuple[float, float]]) -> dict[str, list]:
    """[lower, upper) per band; the open upper end of "high" is null (JSON has no infinity)."""
    return {name: [lo, None if math.isinf(hi) else hi] for name, (lo, hi) in bands.items()}


def load_grid(path: str | Path) -> list[dict]:
    """The clips of a grid.json with `path` and `first_frame` resolved to absolute paths."""
    path = Path(path)
    clips = json.loads(path.read_text())["clips"]
    for clip in clips:
        clip["path"] = str((path.parent / clip["path"]).resolve())
        clip["first_frame"] = str((path.parent / clip["first_frame"]).resolve())
    return clips
