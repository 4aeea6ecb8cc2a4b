"""Wan2.1 I2V: everything cinelora knows about Wan2.1 lives in this folder (`FAMILY` implements
`core.models.base.ModelFamily`); other packages reach it through `core.models`."""

from core.models.base import Components
from core.models.wan21.conditioning import (
    TEXT_TOKENS,
    encode_condition,
    encode_image,
    encode_prompt,
    encode_video,
    latent_frames,
    model_input,
    patch_grid,
)
from core.models.wan21.family import FAMILY, Wan21I2V
from core.models.wan21.geometry import GEOMETRY
from core.models.wan21.loading import (
    MIDSIZE_TRANSFORMER,
    PATCH,
    REAL_TRANSFORMER,
    SUBFOLDERS,
    TINY_TRANSFORMER,
    TINY_VAE,
    build_tiny,
    check_folder,
    load_components,
    model_folder,
    tiny_modules,
)
from core.models.wan21.lora import (
    CROSS_ATTN_TARGETS,
    DIFFUSERS_TO_ORIGINAL,
    FFN_TARGETS,
    IMAGE_BRANCH_TARGETS,
    LORA_TARGETS,
    SELF_ATTN_TARGETS,
)

WanComponents = Components  # the name the Wan-only call sites used

__all__ = [
    "CROSS_ATTN_TARGETS",
    "DIFFUSERS_TO_ORIGINAL",
    "FAMILY",
    "FFN_TARGETS",
    "GEOMETRY",
    "IMAGE_BRANCH_TARGETS",
    "LORA_TARGETS",
    "MIDSIZE_TRANSFORMER",
    "PATCH",
    "REAL_TRANSFORMER",
    "SELF_ATTN_TARGETS",
    "SUBFOLDERS",
    "TEXT_TOKENS",
    "TINY_TRANSFORMER",
    "TINY_VAE",
    "Wan21I2V",
    "WanComponents",
    "build_tiny",
    "check_folder",
    "encode_condition",
    "encode_image",
    "encode_prompt",
    "encode_video",
    "latent_frames",
    "load_components",
    "model_folder",
    "model_input",
    "patch_grid",
    "tiny_modules",
]
