"""Small pieces every family's loader shares: dtype names and device resolution."""

from __future__ import annotations

import torch

from core.config import ConfigError

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`model.device` -> a torch device (auto = cuda if present); one-line error for a missing GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device={name} but no CUDA GPU is visible; use model.device=cpu or auto")
    return torch.device(name)
