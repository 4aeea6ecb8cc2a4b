"""Validation samples during training: fixed prompts and images, the trained transformer.

Prompt embeddings are computed once at start; the text encoder (UMT5-XXL for 14B, ~11 GB) is
then dropped and only the VAE and the image encoder (Wan2.1's CLIP; Wan2.2 has none) stay for sampling. Samples render
through the project's one denoising loop (`infer.sampler`, what `infer.generate` runs), so a
sample is what inference would produce: uniform tokens always (`sample_<i>_uniform`), and with
the stage's CAT policy beside it in stage 2 (`sample_<i>_cat`). Each sample is written as an
mp4 plus its first, middle and last frames (PNG).

Dependency: train.samples -> infer.sampler / infer.policy (imported when rendering); neither
imports train/, so there is no cycle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cat.policy import CatPolicy, TokenPolicy, UniformPolicy
from core.config import ConfigError
from core.media import synthetic_frame, to_uint8_frames, write_mp4
from core.models import Components, encode_prompt
from core.schema import ValidationConfig


@dataclass
class SampleFiles:
    prompt: str
    video: Path
    frames: list[Path]  # first, middle, last
    tokens: str = "uniform"  # the policy's name: uniform | cat
    tokens_per_step: list[int] = field(default_factory=list)


class SampleRenderer:
    """Renders the configured prompt/image pairs with whatever adapters the transformer holds."""

    def __init__(self, comp: Components, cfg: ValidationConfig, device: torch.device | str | None = None,
                 policy: TokenPolicy = UniformPolicy()):
        """Encodes the prompts on `device` (the text encoder visits it once, then goes back to the CPU);
        the VAE and the image encoder move there for sampling. A `cat.CatPolicy` adds a CAT sample
        beside each uniform one."""
        self.cfg = cfg
        self.policies: list[TokenPolicy] = [UniformPolicy()] + ([policy] if isinstance(policy, CatPolicy) else [])
        device = torch.device(device) if device is not None else comp.device
        self.images = [self._image(i) for i in range(len(cfg.prompts))]
        text_encoder_device = next(comp.text_encoder.parameters()).device
        comp.text_encoder.to(device)
        on_device = dataclasses.replace(comp, device=device)
        self.prompt_embeds = encode_prompt(on_device, list(cfg.prompts)).float().cpu()
        self.negative_embeds = encode_prompt(on_device, [""] * len(cfg.prompts)).float().cpu()
        comp.text_encoder.to(text_encoder_device)
        self.vae = comp.vae.to(device)
        self.image_encoder = comp.image_encoder.to(device) if comp.image_encoder is not None else None  # Wan2.2: none
        self.comp = dataclasses.replace(comp, text_encoder=None, device=device)
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
        """One video per prompt and policy into out_dir (nothing written with write=False); the
        global RNG and train/eval mode are left as found."""
        from diffusers import UniPCMultistepScheduler

        from infer.sampler import conditioning_from_embeds, decode, denoise, frame_tensor

        cfg = self.cfg
        was_training = transformer.training
        transformer.eval()
        device = next(transformer.parameters()).device
        dtype = transformer.patch_embedding.weight.dtype
        comp = dataclasses.replace(self.comp, transformer=transformer, device=device, dtype=dtype,
                                   scheduler=UniPCMultistepScheduler.from_config(self.scheduler_config))
        files = []
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for i, (prompt, image) in enumerate(zip(cfg.prompts, self.images, strict=True)):
                    negative = self.negative_embeds[i : i + 1] if cfg.guidance_scale > 1.0 else None
                    cond = conditioning_from_embeds(comp, frame_tensor(image), self.prompt_embeds[i : i + 1],
                                                    negative, cfg.num_frames, image)
                    for policy in self.policies:
                        result = denoise(comp, cond, policy, steps=cfg.steps, seed=cfg.seed + i,
                                         guidance_scale=cfg.guidance_scale)
                        if write:
                            frames = to_uint8_frames(decode(comp, result.latents)[0])
                            sample = self._write(frames, prompt, out_dir / f"sample_{i}_{policy.name}")
                            files.append(dataclasses.replace(sample, tokens=policy.name,
                                                             tokens_per_step=result.tokens_per_step))
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
