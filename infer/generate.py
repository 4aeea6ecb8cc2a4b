"""Image + prompt -> mp4 through the project's one denoising loop (`infer.sampler`, what the A/B
and training samples run), with uniform tokens or CAT (`cat:`, the A/B's schema).

    python -m infer.generate --config configs/generate.yaml [cat.rho=0.5] [output_dir=DIR] [key=value ...]

Writes video.mp4, contact_sheet.png, overlay.png (CAT: the last step's allocation over the
generated frames), generate.json (tokens per step against the uniform count, s/step, settings)
and config.yaml; generate.json's `detail_tokens` counts, per step, the coarse tokens that
restore the conditioning image's sub-token detail (reference detail, docs/cat.md). With uniform
tokens the output equals `WanImageToVideoPipeline` (tested).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from PIL import Image

from cat.policy import CatPolicy, TokenPolicy, UniformPolicy
from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.io import write_json_atomic
from core.lora_check import check_lora_file, original_keys, transformer_layout
from core.lora_files import apply_loras, find_lora_file
from core.media import contact_sheet, synthetic_frame, to_uint8_frames, write_mp4
from core.models import Components, load_components
from core.schema import GenerateConfig, LoraFile
from infer.sampler import DenoiseResult, decode, denoise, frame_tensor, make_scheduler, prepare_conditioning


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
        check_lora_file(file, layout, f"loras[{i}].path", original_keys(cfg.model))
        out.append(dataclasses.replace(lora, path=str(file), name=lora.name or f"{file.stem}_{i}"))
    return out


def token_policy(cfg: GenerateConfig) -> TokenPolicy:
    """Uniform tokens, or CAT with the `cat:` settings (the A/B's CAT arm for the same settings)."""
    return CatPolicy.from_config(cfg.cat) if cfg.cat is not None else UniformPolicy()


def build_components(cfg: GenerateConfig, loras: list[LoraFile]) -> Components:
    """The model with its scheduler (`scheduler`, `flow_shift`), LoRAs and CPU offload applied."""
    comp = load_components(cfg.model)
    if cfg.scheduler != "model":
        comp.scheduler = make_scheduler(cfg.scheduler, cfg.flow_shift)
    pipe = comp.pipeline()
    if cfg.model.cpu_offload:
        pipe.enable_model_cpu_offload()
    apply_loras(pipe, loras)
    return comp


@dataclass
class Generation:
    video: torch.Tensor  # (1, 3, T, H, W) in [-1, 1]
    result: DenoiseResult
    uniform_tokens: int
    conditioning_seconds: float


def render(cfg: GenerateConfig, comp: Components, image: Image.Image, progress: Any = None) -> Generation:
    """Condition on `image`, denoise with the configured token policy, decode."""
    cond = prepare_conditioning(comp, frame_tensor(image), cfg.prompt, cfg.num_frames, cfg.negative_prompt,
                                cfg.guidance_scale)
    result = denoise(comp, cond, token_policy(cfg), steps=cfg.steps, seed=cfg.seed,
                     guidance_scale=cfg.guidance_scale, progress=progress)
    uniform = math.prod(comp.family.geometry.patch_grid(cfg.num_frames, cfg.height, cfg.width))
    return Generation(decode(comp, result.latents), result, uniform, cond.seconds)


def generate(cfg: GenerateConfig, progress: bool = True) -> dict:
    """Run the sampler and write video.mp4, contact_sheet.png, overlay.png (CAT), generate.json."""
    from tqdm import tqdm

    image = load_image(cfg.image, cfg.height, cfg.width)  # inputs first: nothing loads before they are known good
    loras = checked_loras(cfg)
    comp = build_components(cfg, loras)
    with tqdm(total=cfg.steps, desc="denoising", unit="step", disable=not progress) as bar:
        gen = render(cfg, comp, image, bar)
    frames = to_uint8_frames(gen.video[0])
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_mp4(frames, out_dir / "video.mp4", fps=cfg.fps)
    sheet = contact_sheet(frames, out_dir / "contact_sheet.png")
    overlay = _overlay(gen, out_dir / "overlay.png", comp.family.geometry)
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    steps = gen.result.steps
    info = {"video": str(video), "contact_sheet": str(sheet), "overlay": str(overlay) if overlay else None,
            "frames": int(frames.shape[0]), "height": int(frames.shape[1]), "width": int(frames.shape[2]),
            "model_id": comp.model_id, "tokenization": token_policy(cfg).name,
            "tokens": [s.tokens for s in steps], "uniform_tokens": gen.uniform_tokens,
            "tokens_mean": sum(s.tokens for s in steps) / len(steps),
            "detail_tokens": [s.detail_tokens for s in steps],  # of them restoring the image's sub-token detail
            "s_per_step": gen.result.seconds / len(steps), "step_seconds": [s.seconds for s in steps],
            "conditioning_seconds": gen.conditioning_seconds, "device": str(comp.device),
            "settings": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)}
    write_json_atomic(out_dir / "generate.json", info)
    return info


def _overlay(gen: Generation, path: Path, geometry: Any) -> Path | None:
    """The last CAT allocation over the generated frames (None when every step ran uniform tokens),
    drawn in the model family's pixel cells."""
    allocations = [a for _, a in gen.result.allocations if a is not None]
    if not allocations:
        return None
    from cat.overlay import draw_allocation

    return draw_allocation(gen.video, allocations[-1], path, geometry=geometry)


def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(GenerateConfig, argv, default_config="configs/generate.yaml", command="infer.generate")
    info = generate(cfg)
    tokens = f"{info['tokens_mean']:.1f} of {info['uniform_tokens']} tokens/step ({info['tokenization']})"
    print(f"wrote {info['video']} ({info['frames']} frames, {info['height']}x{info['width']}, {tokens}, "
          f"{info['s_per_step']:.3f} s/step) and {info['contact_sheet']}")


if __name__ == "__main__":
    run_cli(main)
