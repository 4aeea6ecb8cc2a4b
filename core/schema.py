"""Typed configuration schemas: the single source of truth for every config key.

Each entry point loads one top-level schema (``GenerateConfig``, ``PrepareConfig``,
``TrainConfig``, ``ABConfig``) with :func:`core.config.parse_cli`. The README's config
reference is checked against these classes by a test. ``MISSING`` marks a required value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.config import MISSING, ConfigError

DTYPES = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------- model (core/wan.py)
@dataclass
class ModelConfig:
    """Where the Wan2.1 I2V components come from."""

    path: Optional[str] = None  # local diffusers-layout folder (Wan-AI/Wan2.1-I2V-14B-720P-Diffusers)
    preset: str = "tiny"  # used when path is unset: "tiny" = random seeded Wan built offline
    model_id: Optional[str] = None  # name recorded in caches/exports; default: folder name or preset
    dtype: str = "fp32"  # transformer + text encoder dtype: fp32 | bf16 | fp16 (VAE, CLIP stay fp32)
    device: str = "auto"  # auto (cuda if present) | cpu | cuda | cuda:N
    cpu_offload: bool = False  # diffusers model CPU offload at inference (14B on smaller GPUs)
    cache_dir: str = "~/.cache/cinelora"  # where the tiny preset is written once
    seed: int = 0  # seed of the tiny preset's random weights

    def validate(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype '{self.dtype}' is not one of {DTYPES}")
        if self.path is None and self.preset != "tiny":
            raise ConfigError(f"model.preset '{self.preset}' is unknown; use preset=tiny or set model.path=FOLDER")


@dataclass
class LoraFile:
    """One exported LoRA to stack at inference."""

    path: str = MISSING  # .safetensors file or folder from train.export
    weight: float = 1.0  # scale of this adapter's contribution
    name: Optional[str] = None  # adapter name; default: file stem


# ---------------------------------------------------------------- generation (infer/generate.py)
@dataclass
class GenerateConfig:
    """`python -m infer.generate`: one image + prompt to one video."""

    model: ModelConfig = field(default_factory=ModelConfig)
    image: Optional[str] = None  # conditioning image; unset = a built-in synthetic test frame
    prompt: str = "a cinematic shot, warm light, film grain"
    negative_prompt: str = ""  # used when guidance_scale > 1
    height: int = 64  # pixels, multiple of 16
    width: int = 64  # pixels, multiple of 16
    num_frames: int = 9  # 4k+1 (Wan VAE)
    steps: int = 4  # denoising steps
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 = off (one transformer pass per step)
    seed: int = 0  # noise seed
    fps: int = 16  # frame rate written into the mp4
    loras: list[LoraFile] = field(default_factory=list)  # exported LoRAs stacked on the base model
    output_dir: str = "runs/generate"  # video.mp4, contact_sheet.png, generate.json, config.yaml

    def validate(self) -> None:
        self.model.validate()
        check_frames(self.num_frames, "num_frames")
        check_size(self.height, self.width)


def check_frames(n: int, key: str) -> None:
    """Wan's VAE compresses time 4x with one extra first frame: clips need 4k+1 frames."""
    if n < 1 or (n - 1) % 4:
        lo, hi = 1 + 4 * ((n - 1) // 4), 1 + 4 * ((n - 1) // 4 + 1)
        raise ConfigError(f"{key}={n} is not of the form 4k+1 (Wan VAE); use {max(lo, 1)} or {hi}")


def check_size(height: int, width: int) -> None:
    """Latents are 8x smaller and patches 2x2: pixel sizes must be multiples of 16."""
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % 16:
            raise ConfigError(f"{key}={value} must be a positive multiple of 16; use {max(16, value // 16 * 16)}")


# ---------------------------------------------------------------- data (data/prepare.py) — owned by the data work
# Landscape base sizes (height, width) of the resolution presets; other aspect ratios keep the area.
RESOLUTION_PRESETS = {"480p": (480, 832), "720p": (720, 1280)}
MISSING_CAPTION_POLICIES = ("skip", "default")


@dataclass
class PrepareConfig:
    """`python -m data.prepare`: a folder of clips -> windows, manifest, caches, dataset card."""

    input_dir: str = MISSING  # folder of mp4/mov/mkv/webm clips (searched recursively)
    output_dir: str = MISSING  # manifest/, cache/, rejects.jsonl, README.md land here
    model: ModelConfig = field(default_factory=ModelConfig)  # encoder for the caches (VAE, UMT5, CLIP)
    num_frames: int = 33  # frames per window; 4k+1 (Wan VAE)
    stride: int = 0  # frames between window starts at the target fps; 0 = num_frames (no overlap)
    fps: float = 16.0  # clips are resampled to this frame rate (by timestamps: variable frame rate is fine)
    max_windows_per_clip: int = 0  # 0 = no limit
    keyframes: bool = False  # also add one single-frame window (F'=1) per window, at its middle frame
    split_scenes: bool = False  # cut clips at shot changes (PySceneDetect) so no window spans a cut
    scene_threshold: float = 27.0  # PySceneDetect ContentDetector threshold
    resolution: str = "480p"  # 480p | 720p | <N>p (landscape N x ~16N/9, e.g. 64p for the tiny model)
    aspect_ratios: list[float] = field(default_factory=lambda: [16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16])  # width/height
    max_upscale: float = 2.0  # a clip needing more upscaling than this to fill its bucket is rejected
    trigger: Optional[str] = None  # prepended to every caption ("elturco style, ...")
    missing_caption: str = "skip"  # skip (reported in rejects.jsonl) | default (use default_caption, reported)
    default_caption: str = "a cinematic shot"
    metadata_file: Optional[str] = None  # captions table (.csv with file,caption / .jsonl); default: input_dir/metadata.*
    val_fraction: float = 0.1  # share of CLIPS in the validation split (deterministic hash of the relative path)
    encode: bool = True  # false: manifest + complexity only, no model needed
    batch_size: int = 1  # windows per VAE call (same bucket)

    def validate(self) -> None:
        self.model.validate()
        check_frames(self.num_frames, "num_frames")
        if self.stride < 0:
            raise ConfigError(f"stride={self.stride} must be >= 0 (0 = num_frames, no overlap)")
        if self.fps <= 0:
            raise ConfigError(f"fps={self.fps} must be positive")
        if self.missing_caption not in MISSING_CAPTION_POLICIES:
            raise ConfigError(f"missing_caption='{self.missing_caption}' is not one of {MISSING_CAPTION_POLICIES}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if not self.aspect_ratios or any(a <= 0 for a in self.aspect_ratios):
            raise ConfigError(f"aspect_ratios={self.aspect_ratios} must be a non-empty list of positive width/height")
        if self.max_upscale < 1.0:
            raise ConfigError(f"max_upscale={self.max_upscale} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        resolution_base(self.resolution)


def resolution_base(name: str) -> tuple[int, int]:
    """(height, width) of a landscape bucket for a preset name or `<N>p`; multiples of 16."""
    if name in RESOLUTION_PRESETS:
        return RESOLUTION_PRESETS[name]
    digits = name[:-1] if name.endswith("p") else ""
    if not digits.isdigit() or int(digits) < 16 or int(digits) % 16:
        raise ConfigError(
            f"resolution='{name}' is unknown; use {' | '.join(RESOLUTION_PRESETS)} or <N>p with N a multiple of 16"
        )
    height = int(digits)
    return height, max(16, round(height * 16 / 9 / 16) * 16)


# ---------------------------------------------------------------- cat (cat/) — owned by the cat work


# ---------------------------------------------------------------- training (train/) — owned by the train work


# ---------------------------------------------------------------- A/B inference (infer/ab.py) — owned by the infer work
