"""Wan2.2 TI2V-5B: everything cinelora knows about Wan2.2 lives in this folder (`FAMILY`
implements `core.models.base.ModelFamily`); other packages reach it through `core.models`."""

from core.models.wan22.family import FAMILY, GEOMETRY, LORA_TARGETS, ORIGINAL_KEYS, Wan22TI2V
from core.models.wan22.preset import REAL_TRANSFORMER, SUBFOLDERS, TINY_TRANSFORMER, TINY_VAE, tiny_modules

__all__ = [
    "FAMILY",
    "GEOMETRY",
    "LORA_TARGETS",
    "ORIGINAL_KEYS",
    "REAL_TRANSFORMER",
    "SUBFOLDERS",
    "TINY_TRANSFORMER",
    "TINY_VAE",
    "Wan22TI2V",
    "tiny_modules",
]
