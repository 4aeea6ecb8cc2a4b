"""Validation samples during training: fixed prompts and images, the trained transformer.

Prompt embeddings are computed once at start; the text encoder (UMT5-XXL for 14B, ~11 GB) is
then dropped and only the VAE and the CLIP image encoder stay for sampling. Each sample is
written as an mp4 plus its first, middle and last frames (PNG).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.config import ConfigError
from core.media import to_uint8_frames, write_mp4
from core.models import Components, encode_prompt
from core.schema import ValidationConfig


def synthetic_frame(height: int, width: int, index: int = 0) -> Image.Image:
    """A deterministic colour test frame (index shifts its phase) for prompts without an image."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = index * 1.3
    r = 0.5 + 0.5 * np.sin(x / max(width, 1) * 6.28 + phase)
    g = y / max(height - 1, 1)
    b = 0.5 + 0.5 * np.cos((x + y) / max(height + width, 1) * 12.0 + phase)
    return Image.fromarray((np.stack([r, g, b], -1) * 255).astype(np.uint8))


@dataclass
class SampleFiles:
    prompt: str
    video: Path
    frames: list[Path]  # first, middle, last


class SampleRenderer:
    """Renders the configured prompt/image pairs with whatever adapters the transformer holds."""

    def __init__(self, comp: Components, cfg: ValidationConfig, device: torch.device | str | None = None):
        """Encodes the prompts on `device` (the text encoder visits it once, then goes back to the CPU);
        the VAE and the image encoder move there for sampling."""
        self.cfg = cfg
        device = torch.device(device) if device is not None else comp.device
        self.images = [self._image(i) for i in range(len(cfg.prompts))]
        text_encoder_device = next(comp.text_encoder.parameters()).device
        comp.text_encoder.to(device)
        on_device = dataclasses.replace(comp, device=device)
        self.prompt_embeds = encode_prompt(on_device, list(cfg.prompts)).float().cpu()
        self.negative_embeds = encode_prompt(on_device, [""] * len(cfg.prompts)).float().cpu()
        comp.text_encoder.to(text_encoder_device)
        self.vae, self.image_encoder = comp.vae.to(device), comp.image_encoder.to(device)
        self.image_processor, self.scheduler_config = comp.image_processor, comp.scheduler.config

    def _image(self, index: int) -> Image.Image:
        cfg = self.cfg
        if index >= len(cfg.images):
            return synthetic_frame(cfg.height, cfg.width, index)
        path = Path(cfg.images[index]).expanduser()
        if not path.is_file():
            raise ConfigError(f"validation.images[{index}] '{path}' not found")
        return Image.open(path).convert("RGB").resize((cfg.width, cfg.height), Image.BICUBIC)

    @torch.no_grad()
    def render(self, transformer: Any, out_dir: Path, write: bool = True) -> list[SampleFiles]:
        """One video per prompt into out_dir (nothing written with write=False); the global RNG and
        train/eval mode are left as found."""
        from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

        cfg = self.cfg
        pipe = WanImageToVideoPipeline(
            tokenizer=None, text_encoder=None, image_encoder=self.image_encoder, image_processor=self.image_processor,
            transformer=transformer, vae=self.vae, scheduler=UniPCMultistepScheduler.from_config(self.scheduler_config),
        )
        pipe.set_progress_bar_config(disable=True)
        was_training = transformer.training
        transformer.eval()
        device = next(transformer.parameters()).device
        dtype = transformer.patch_embedding.weight.dtype
        files = []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for i, (prompt, image) in enumerate(zip(cfg.prompts, self.images, strict=True)):
                    generator = torch.Generator(device="cpu").manual_seed(cfg.seed + i)
                    out = pipe(
                        image=image, prompt_embeds=self.prompt_embeds[i : i + 1].to(device, dtype),
                        negative_prompt_embeds=self.negative_embeds[i : i + 1].to(device, dtype),
                        height=cfg.height, width=cfg.width, num_frames=cfg.num_frames,
                        num_inference_steps=cfg.steps, guidance_scale=cfg.guidance_scale, generator=generator,
                        output_type="np",
                    )
                    if write:
                        frames = to_uint8_frames(out.frames[0])
                        files.append(self._write(frames, prompt, out_dir / f"sample_{i}"))
        finally:
            transformer.train(was_training)
        return files

    def _write(self, frames: np.ndarray, prompt: str, stem: Path) -> SampleFiles:
        video = write_mp4(frames, stem.with_suffix(".mp4"), fps=self.cfg.fps)
        picks = {"first": 0, "middle": len(frames) // 2, "last": len(frames) - 1}
        paths = []
        for label, index in picks.items():
            path = stem.parent / f"{stem.name}_{label}.png"
            Image.fromarray(frames[index]).save(path)
            paths.append(path)
        return SampleFiles(prompt, video, paths)
