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
    weight: float = 1.0
    name: Optional[str] = None  # adapter name; default: file stem


# ---------------------------------------------------------------- generation (infer/generate.py)
@dataclass
class GenerateConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    image: Optional[str] = None  # conditioning image; unset = a built-in synthetic test frame
    prompt: str = "a cinematic shot, warm light, film grain"
    negative_prompt: str = ""
    height: int = 64
    width: int = 64
    num_frames: int = 9  # 4k+1
    steps: int = 4
    guidance_scale: float = 1.0
    seed: int = 0
    fps: int = 16
    loras: list[LoraFile] = field(default_factory=list)
    output_dir: str = "runs/generate"

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


# ---------------------------------------------------------------- cat (cat/) — owned by the cat work


# ---------------------------------------------------------------- training (train/) — owned by the train work


# ---------------------------------------------------------------- A/B inference (infer/ab.py) — owned by the infer work
