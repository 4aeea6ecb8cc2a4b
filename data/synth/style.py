"""A "cinematic style" clip set with a measurable look, and its neutral twin.

The same seeded scenes (sky and ground gradients, a sun, soft coloured shapes drifting) are
written twice: neutral, and with a look (warm grade, S-curve contrast, vignette, film grain,
2.39:1 letterbox) and captions that start with a trigger word. `look_metrics` measures each
ingredient of the look on any frames, so a test can show that a style LoRA trained on the
styled set moves a model's output towards it (warmer, darker corners, bars, grain).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from core.io import write_text_atomic
from data.synth import layers
from data.writer import write_video

LETTERBOX_ASPECT = 2.39
COLOURS = {  # name -> RGB on 0..255; names the tiny tokenizer knows
    "red": (210, 50, 40),
    "blue": (40, 80, 210),
    "green": (50, 170, 70),
    "gold": (220, 180, 50),
    "orange": (230, 120, 30),
    "teal": (30, 150, 150),
}
SKIES = {"day": ((90, 140, 220), (200, 215, 235)), "night": ((15, 20, 50), (60, 70, 110))}
CRF = 16


def _disc(h: int, w: int, cy: float, cx: float, radius: float, edge: float) -> torch.Tensor:
    y, x = layers.coords(h, w)
    dist = torch.sqrt((y.view(-1, 1) - cy) ** 2 + (x.view(1, -1) - cx) ** 2)
    return torch.sigmoid((radius - dist) / edge)


def _scene(index: int, h: int, w: int, frames: int, seed: int) -> tuple[list[torch.Tensor], str]:
    """Neutral frames (each (3, H, W) float 0..255) and a plain caption of one seeded scene."""
    rng = np.random.default_rng(seed * 7919 + index)
    time_of_day = "night" if rng.random() < 0.3 else "day"
    top, horizon = SKIES[time_of_day]
    sky = layers.gradient_background(h, w, top, horizon, tilt=0.0)
    ground = layers.gradient_background(h, w, (90, 110, 70), (40, 60, 35), tilt=0.05)
    horizon_y = rng.uniform(0.55, 0.7)
    ground_mask = layers.soft_box(h, w, (horizon_y, -1.0, 2.0, 2.0), softness=0.004)
    base = sky * (1 - ground_mask) + ground * ground_mask
    sun_y, sun_x = rng.uniform(0.15, 0.35) * h, rng.uniform(0.2, 0.8) * w
    base = base + 70 * layers.blob(h, w, sun_y, sun_x, 0.06 * min(h, w)).unsqueeze(0)
    names = rng.choice(list(COLOURS), size=2, replace=False)
    speed_word = "slowly" if rng.random() < 0.5 else "fast"
    speed = (0.004 if speed_word == "slowly" else 0.012) * w
    shapes = []
    for name in names:
        shapes.append(
            (
                torch.tensor(COLOURS[name], dtype=torch.float32).view(3, 1, 1),
                rng.uniform(0.3, 0.8) * h,
                rng.uniform(0.1, 0.9) * w,
                rng.uniform(0.06, 0.12) * min(h, w),
                speed * rng.choice([-1.0, 1.0]),
                rng.uniform(-0.3, 0.3) * speed,
            )
        )
    out = []
    for t in range(frames):
        frame = base.clone()
        for colour, cy, cx, radius, vx, vy in shapes:
            mask = _disc(h, w, cy + vy * t, cx + vx * t, radius, edge=max(0.8, radius * 0.08)).unsqueeze(0)
            frame = frame * (1 - mask) + colour * mask
        out.append(frame.clamp_(0, 255))
    caption = f"a {names[0]} light and a {names[1]} light move {speed_word} in the sky, {time_of_day}, wide shot"
    return out, caption


def letterbox_rows(height: int, width: int) -> int:
    """Rows of black bar at top (and bottom) for a 2.39:1 picture inside the frame."""
    return max(0, int(round((height - width / LETTERBOX_ASPECT) / 2)))


def apply_look(frames: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """The cinematic look: warm grade and S-curve, vignette, per-frame film grain, letterbox."""
    _, h, w = frames[0].shape
    y, x = layers.coords(h, w)
    r2 = ((y.view(-1, 1) / h - 0.5) ** 2 + (x.view(1, -1) / w - 0.5) ** 2) / 0.5
    vignette = (1 - 0.55 * r2.pow(1.1)).clamp_(0.25, 1)
    gain = torch.tensor([1.12, 1.0, 0.78]).view(3, 1, 1)
    lift = torch.tensor([12.0, 4.0, -6.0]).view(3, 1, 1)
    bars = letterbox_rows(h, w)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for frame in frames:
        v = (frame / 255.0).clamp(0, 1)
        v = v * v * (3 - 2 * v) * 0.6 + v * 0.4  # gentle S-curve contrast
        graded = v * 255 * gain + lift
        graded = graded * vignette
        grain = layers.blur(torch.randn(h, w, generator=generator), 0.7) * 14.0
        graded = graded + grain.unsqueeze(0)
        if bars:
            graded[:, :bars] = 0
            graded[:, h - bars :] = 0
        out.append(graded.clamp_(0, 255))
    return out


def look_metrics(frames: np.ndarray) -> dict[str, float]:
    """Each ingredient of the look, measured on (T, H, W, 3) uint8 frames:
    warmth = mean(R - B) of the picture inside any bars; vignette = mean luma of the centre over
    that of the corners; letterbox = share of the 2.39:1 bar rows that are black (luma < 24);
    grain = robust std (1.4826 x median absolute value) of luma minus its 2-px blur, averaged over
    frames: fine noise energy, insensitive to the few pixels on content edges."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).float()
    t, h, w, _ = video.shape
    luma = 0.299 * video[..., 0] + 0.587 * video[..., 1] + 0.114 * video[..., 2]
    bars = letterbox_rows(h, w)
    rows_luma = luma.mean(dim=(0, 2))
    letterbox = float(torch.cat([rows_luma[:bars], rows_luma[h - bars :]]).lt(24).float().mean()) if bars else 0.0
    inner = slice(bars, h - bars) if bars else slice(0, h)
    picture = video[:, inner]
    warmth = float((picture[..., 0] - picture[..., 2]).mean())
    ph, pw = picture.shape[1:3]
    lum = luma[:, inner]
    centre = lum[:, ph // 3 : 2 * ph // 3, pw // 3 : 2 * pw // 3].mean()
    cy, cx = max(1, ph // 5), max(1, pw // 6)
    corners = torch.cat([lum[:, :cy, :cx], lum[:, :cy, -cx:], lum[:, -cy:, :cx], lum[:, -cy:, -cx:]], dim=1).mean()
    vignette = float(centre / corners.clamp_min(1.0))
    residual = torch.stack([lum[i] - layers.blur(lum[i], 2.0) for i in range(t)])
    grain = float((1.4826 * residual.flatten(1).abs().median(dim=1).values).mean())
    return {"warmth": warmth, "vignette": vignette, "letterbox": letterbox, "grain": grain}


def make_style_set(
    out_dir: str | Path,
    n_clips: int = 8,
    height: int = 176,
    width: int = 320,
    frames: int = 33,
    fps: int = 16,
    seed: int = 0,
    trigger: str = "elturco style",
    look: bool = True,
) -> Path:
    """Write `n_clips` clips with sidecar captions and a `metadata.jsonl` (file_name, caption, look metrics,
    settings: the captions-table layout data.prepare and Hugging Face `videofolder` read, so the folder
    prepares with no stray file); `look=False` gives the neutral twin (same scenes, no look, no
    trigger). Returns the folder."""
    if height % 2 or width % 2:
        raise ValueError(f"style clip size {width}x{height} must be even (H.264 4:2:0)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with layers.single_thread():
        entries = [
            _write_style_clip(out, index, height, width, frames, fps, seed, trigger, look) for index in range(n_clips)
        ]
    rows = [
        {
            **entry,
            "look": look,
            "trigger": trigger if look else None,
            "seed": seed,
            "height": height,
            "width": width,
            "frames": frames,
            "fps": fps,
        }
        for entry in entries
    ]
    write_text_atomic(out / "metadata.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return out


def _write_style_clip(
    out: Path, index: int, height: int, width: int, frames: int, fps: int, seed: int, trigger: str, look: bool
) -> dict:
    neutral, caption = _scene(index, height, width, frames, seed)
    shown = apply_look(neutral, seed * 7919 + index) if look else neutral
    if look and trigger:
        caption = f"{trigger}, {caption}"
    array = np.stack([f.round().to(torch.uint8).permute(1, 2, 0).numpy() for f in shown])
    name = f"{'style' if look else 'neutral'}_{index:03d}"
    write_video(array, out / f"{name}.mp4", fps=fps, crf=CRF)
    (out / f"{name}.txt").write_text(caption + "\n")
    return {"file_name": f"{name}.mp4", "caption": caption, **{k: round(v, 4) for k, v in look_metrics(array).items()}}


def make_neutral_set(
    out_dir: str | Path,
    n_clips: int = 8,
    height: int = 176,
    width: int = 320,
    frames: int = 33,
    fps: int = 16,
    seed: int = 0,
) -> Path:
    """The same scenes as `make_style_set(..., seed)` without the look or the trigger word."""
    return make_style_set(out_dir, n_clips, height, width, frames, fps, seed, trigger="", look=False)


def summarize(folder: str | Path) -> dict[str, float]:
    """Mean look metrics of a style (or neutral) set, from its metadata.jsonl."""
    lines = (Path(folder) / "metadata.jsonl").read_text().splitlines()
    clips = [json.loads(line) for line in lines if line.strip()]
    keys = ("warmth", "vignette", "letterbox", "grain")
    return {k: float(np.mean([c[k] for c in clips])) if clips else math.nan for k in keys}
