"""Model families behind one protocol (`core.models.base`); `model.family` picks one.

Generic callers hold a `Components` (from `load_components`) and ask `comp.family`; the helpers
below dispatch the most common questions so call sites stay short."""

from __future__ import annotations

from typing import Any

import torch

from core.models.base import Components, Geometry, ModelFamily, denormalize_latents, normalize_latents
from core.models.common import TORCH_DTYPES, resolve_device
from core.models.registry import DEFAULT_FAMILY, family_names, family_of, get_family


def load_components(cfg: Any) -> Components:
    """Load the components of `cfg.family` (a `ModelConfig`)."""
    return get_family(getattr(cfg, "family", None)).load(cfg)


def model_folder(cfg: Any) -> Any:
    return get_family(getattr(cfg, "family", None)).model_folder(cfg)


def encode_prompt(comp: Components, prompts: list[str]) -> torch.Tensor:
    return comp.family.encode_prompt(comp, prompts)


def encode_image(comp: Components, images: Any) -> torch.Tensor | None:
    return comp.family.encode_image(comp, images)


def encode_video(comp: Components, video: torch.Tensor) -> torch.Tensor:
    return comp.family.encode_video(comp, video)


def encode_condition(comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    return comp.family.encode_condition(comp, first_frame, num_frames)


def model_input(comp: Components, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    return comp.family.model_input(noisy, condition)


__all__ = [
    "DEFAULT_FAMILY",
    "TORCH_DTYPES",
    "Components",
    "Geometry",
    "ModelFamily",
    "denormalize_latents",
    "encode_condition",
    "encode_image",
    "encode_prompt",
    "encode_video",
    "family_names",
    "family_of",
    "get_family",
    "load_components",
    "model_folder",
    "model_input",
    "normalize_latents",
    "resolve_device",
]
