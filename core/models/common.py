"""Small pieces every family's loader shares: dtype names, device resolution, the diffusers-folder
check and the tiny presets' text encoder."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def check_diffusers_folder(folder: Path, subfolders: Sequence[str], kind: str, example: str) -> None:
    """One clear error listing what a diffusers-layout folder of `kind` (e.g. "Wan2.1 I2V") must hold."""
    if not folder.is_dir():
        raise ConfigError(
            f"model.path '{folder}' is not a folder; expected a diffusers-layout {kind} folder "
            f"with {', '.join(subfolders)} (e.g. {example} downloaded locally)"
        )
    missing = [name for name in subfolders if not (folder / name).is_dir()]
    if not (folder / "model_index.json").is_file():
        missing.insert(0, "model_index.json")
    if missing:
        raise ConfigError(
            f"model.path '{folder}' lacks {', '.join(missing)}; a {kind} diffusers folder holds "
            f"model_index.json and {', '.join(subfolders)}"
        )


def model_folder_or_preset(
    cfg: Any, check_folder: Callable[[Path], None], build_tiny: Callable[..., None], name: str, key_text: str
) -> Path:
    """`model.path` (checked by `check_folder`), or the tiny preset's cache folder
    `<cache_dir>/<name>-<preset>-<sha256(key_text)[:10]>`, built by `build_tiny` on first use
    (`key_text` holds the recipe's format and seed, so a changed recipe gets a new folder)."""
    if cfg.path is not None:
        folder = Path(cfg.path).expanduser()
        check_folder(folder)
        return folder
    key = hashlib.sha256(key_text.encode()).hexdigest()[:10]
    folder = Path(cfg.cache_dir).expanduser() / f"{name}-{cfg.preset}-{key}"  # preset: only "tiny" validates
    if not (folder / "model_index.json").is_file():
        build_tiny(folder, seed=cfg.seed)
    return folder


def tiny_text_encoder(vocab_size: int) -> Any:
    """The tiny presets' random UMT5 encoder (2 layers, width 32), built offline."""
    from transformers import UMT5Config, UMT5EncoderModel

    return UMT5EncoderModel(
        UMT5Config(
            d_model=32,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            relative_attention_max_distance=16,
            vocab_size=vocab_size,
        )
    )
