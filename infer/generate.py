"""Image + prompt -> mp4 (and a PNG contact sheet) with a Wan2.1 I2V pipeline.

    python -m infer.generate --config configs/generate.yaml [output_dir=DIR] [key=value ...]
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.lora_check import check_lora_file, transformer_layout
from core.media import contact_sheet, to_uint8_frames, write_mp4
from core.models import load_components
from core.schema import GenerateConfig, LoraFile
from infer.adapters import apply_loras
from train.lora import find_lora_file


def synthetic_frame(height: int, width: int) -> Image.Image:
    """A deterministic colour test frame used when no conditioning image is given."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 0.5 + 0.5 * np.sin(x / max(width, 1) * 6.28)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / max(height + width, 1) * 12.0)
    return Image.fromarray((np.stack([r, g, b], -1) * 255).astype(np.uint8))


def load_image(path: str | None, height: int, width: int) -> Image.Image:
    if path is None:
        return synthetic_frame(height, width)
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"image '{p}' not found; pass image=PATH to a PNG/JPEG file or leave it unset")
    try:
        return Image.open(p).convert("RGB").resize((width, height), Image.BICUBIC)
    except OSError as exc:
        raise ConfigError(f"image '{p}' is not a readable image: {exc}") from exc


def checked_loras(cfg: GenerateConfig) -> list[LoraFile]:
    """Each LoRA resolved to one file and checked against the model's layout (keys, shapes, rank metadata)
    before the model loads: a bad file costs a second, not a model load and a long traceback."""
    if not cfg.loras:
        return []
    layout = transformer_layout(cfg.model)
    out = []
    for i, lora in enumerate(cfg.loras):
        path = Path(lora.path).expanduser()
        if not path.exists():
            raise ConfigError(f"loras[{i}].path '{path}' does not exist; point it at a file from train.export")
        file = find_lora_file(path)
        check_lora_file(file, layout, f"loras[{i}].path")
        out.append(dataclasses.replace(lora, path=str(file), name=lora.name or f"{file.stem}_{i}"))
    return out


def generate(cfg: GenerateConfig) -> dict:
    """Run the pipeline and write video.mp4, contact_sheet.png and generate.json."""
    image = load_image(cfg.image, cfg.height, cfg.width)  # inputs first: nothing loads before they are known good
    loras = checked_loras(cfg)
    comp = load_components(cfg.model)
    pipe = comp.pipeline()
    if cfg.model.cpu_offload:
        pipe.enable_model_cpu_offload()
    apply_loras(pipe, loras)
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    out = pipe(
        image=image, prompt=cfg.prompt, negative_prompt=cfg.negative_prompt or None,
        height=cfg.height, width=cfg.width, num_frames=cfg.num_frames, num_inference_steps=cfg.steps,
        guidance_scale=cfg.guidance_scale, generator=generator, output_type="np",
    )
    frames = to_uint8_frames(out.frames[0])
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_mp4(frames, out_dir / "video.mp4", fps=cfg.fps)
    sheet = contact_sheet(frames, out_dir / "contact_sheet.png")
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    info = {"video": str(video), "contact_sheet": str(sheet), "frames": int(frames.shape[0]),
            "height": int(frames.shape[1]), "width": int(frames.shape[2]), "model_id": comp.model_id}
    (out_dir / "generate.json").write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(GenerateConfig, argv, default_config="configs/generate.yaml", command="infer.generate")
    info = generate(cfg)
    print(f"wrote {info['video']} ({info['frames']} frames, {info['height']}x{info['width']}) and {info['contact_sheet']}")


if __name__ == "__main__":
    run_cli(main)
