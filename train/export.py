"""Export a checkpoint's LoRA for diffusers and ComfyUI.

    python -m train.export CHECKPOINT [--format diffusers|comfyui|both] [--output DIR] [--dtype fp32|bf16]

CHECKPOINT is a checkpoint folder or a run folder (its latest checkpoint). Writes
`<DIR>/<adapter>.safetensors` (diffusers keys + peft LoraConfig metadata: loads with
`pipe.load_lora_weights` and keeps alpha) and `<DIR>/<adapter>_comfyui.safetensors` (original
Wan keys `diffusion_model.blocks.N.cross_attn.q.lora_A.weight` with `.alpha` scalars). Both carry
`cinelora.*` metadata: stage, rank, alpha, target modules, base model, model family, config hash,
dtype. The original names come from the trained family's map (`cinelora.family`; files without it:
the default family, Wan2.1 I2V).
`--dtype bf16` stores the LoRA matrices in bf16 (half-size files); `.alpha` scalars stay fp32.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.config import ConfigError, run_cli
from core.lora_files import COMFYUI_SUFFIX
from core.models import get_family
from train.checkpoint import ADAPTER_DIR, STATE_FILE, latest_checkpoint
from train.lora import METADATA_KEY, PREFIX, read_metadata, write_lora_file

FORMATS = ("diffusers", "comfyui", "both")
EXPORT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_KEY = re.compile(r"^transformer\.blocks\.(\d+)\.(.+)\.(lora_[AB])\.weight$")


def find_checkpoint(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if (p / STATE_FILE).is_file():
        return p
    latest = latest_checkpoint(p / "checkpoints") if p.is_dir() else None
    if latest is None:
        raise ConfigError(f"'{p}' is neither a checkpoint folder (with {STATE_FILE}) nor a run folder with checkpoints/")
    return latest


def adapter_file(checkpoint: Path) -> Path:
    files = sorted((checkpoint / ADAPTER_DIR).glob("*.safetensors"))
    if len(files) != 1:
        raise ConfigError(f"checkpoint '{checkpoint}' should hold one {ADAPTER_DIR}/*.safetensors, found {len(files)}")
    return files[0]


def to_original_keys(
    state: dict[str, torch.Tensor], peft_config: dict, original_keys: Mapping[str, str]
) -> dict[str, torch.Tensor]:
    """diffusers/peft keys -> original keys through the family's map `original_keys`, with one
    `.alpha` scalar per adapted layer."""
    alpha = float(peft_config.get(PREFIX + "lora_alpha", peft_config.get(PREFIX + "r")))
    alpha_pattern = peft_config.get(PREFIX + "alpha_pattern") or {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _KEY.match(key)
        if match is None or match.group(2) not in original_keys:
            raise ValueError(f"no original Wan name for LoRA key '{key}' (known layers: "
                             f"{', '.join(original_keys)})")
        block, layer, part = match.groups()
        base = f"diffusion_model.blocks.{block}.{original_keys[layer]}"
        out[f"{base}.{part}.weight"] = value
        layer_alpha = next((float(a) for pattern, a in alpha_pattern.items() if f"blocks.{block}.{layer}".endswith(pattern)),
                           alpha)
        out[f"{base}.alpha"] = torch.tensor(layer_alpha, dtype=torch.float32)
    return out


def cast_lora(state: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """LoRA matrices in the export dtype; `.alpha` scalars stay fp32 (they are exact either way)."""
    target = EXPORT_DTYPES[dtype]
    return {k: v if k.endswith(".alpha") else v.to(target).contiguous() for k, v in state.items()}


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path | None = None, fmt: str = "both",
                      dtype: str = "fp32") -> dict[str, Path]:
    """Write the requested formats in `dtype` (fp32 | bf16); returns {format: file}."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt} is not one of {FORMATS}")
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"export dtype '{dtype}' is not one of {tuple(EXPORT_DTYPES)}")
    ckpt = find_checkpoint(checkpoint)
    source = adapter_file(ckpt)
    state = load_file(str(source))
    metadata = read_metadata(source)
    peft_config = json.loads(metadata[METADATA_KEY])
    ours = {k: v for k, v in metadata.items() if k.startswith("cinelora.")}
    family = get_family(ours.get("cinelora.family") or None)  # the trained family's map (older runs: the default)
    ours["cinelora.checkpoint"] = ckpt.name
    ours["cinelora.dtype"] = dtype
    if any(".default." in key for key in state):  # a peft adapter name leaking into keys breaks every loader
        raise ValueError(f"'{source}' has peft adapter names in its keys")
    out_dir = Path(output_dir).expanduser() if output_dir else ckpt.parent.parent / "lora"
    files: dict[str, Path] = {}
    if fmt in ("diffusers", "both"):
        files["diffusers"] = write_lora_file(out_dir / source.name, cast_lora(state, dtype), peft_config,
                                             {**ours, "cinelora.format": "diffusers"})
    if fmt in ("comfyui", "both"):
        # no diffusers metadata here: diffusers folds each `.alpha` into the weights when it converts the keys
        files["comfyui"] = write_lora_file(out_dir / f"{source.stem}{COMFYUI_SUFFIX}.safetensors",
                                           cast_lora(to_original_keys(state, peft_config, family.original_keys), dtype), None,
                                           {**ours, "cinelora.format": "comfyui"})
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint folder, or a run folder (its latest checkpoint)")
    parser.add_argument("--format", default="both", choices=FORMATS)
    parser.add_argument("--output", default=None, help="output folder (default: <run>/lora)")
    parser.add_argument("--dtype", default="fp32", choices=tuple(EXPORT_DTYPES),
                        help="LoRA weight dtype in the files (bf16: half-size files)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    files = export_checkpoint(args.checkpoint, args.output, args.format, args.dtype)
    for fmt, path in files.items():
        print(f"{fmt}: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
