"""`Wan22TI2V`: Wan2.2 TI2V-5B (text + image to video) through the family protocol.

Same `WanTransformer3DModel` and `AutoencoderKLWan` classes as Wan2.1, so the transformer-forward
pieces (patch embedding, rotary tables, condition embedding with per-token timesteps, blocks,
output projection, self-attention for sequence parallelism) are Wan2.1's, inherited. What differs
is data and conditioning: 48 latent channels and no condition channels, a 16x VAE (its own 2x2
pixel patchify inside) so one patch-grid cell is 32 px, no CLIP image encoder, and the image
entering as the clean first latent frame with timestep 0 on its tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.models.base import Components, Geometry
from core.models.wan21 import Wan21I2V
from core.models.wan21.lora import CROSS_ATTN_TARGETS, DIFFUSERS_TO_ORIGINAL, FFN_TARGETS, SELF_ATTN_TARGETS
from core.models.wan22 import conditioning, loading
from core.schema import ModelConfig

GEOMETRY = Geometry(vae_t=4, vae_s=16, patch=(1, 2, 2), noisy_channels=48, condition_channels=0, text_tokens=512)

# No image branch (added_kv_proj_dim is None): cross-attention reads text only.
LORA_TARGETS = {"cross_attn": CROSS_ATTN_TARGETS, "self_attn": SELF_ATTN_TARGETS, "ffn": FFN_TARGETS}
# Original Wan2.2 checkpoint names are Wan2.1's (same module tree) without the image-branch keys.
ORIGINAL_KEYS = {k: v for k, v in DIFFUSERS_TO_ORIGINAL.items() if not v.endswith("_img")}


class Wan22TI2V(Wan21I2V):
    """Wan2.2 TI2V-5B: UMT5 text context only; the image is the clean first latent frame."""

    name = loading.FAMILY_NAME
    geometry = GEOMETRY
    lora_targets = LORA_TARGETS
    original_keys = ORIGINAL_KEYS
    # the 5B transformer's cost-model dims: inner 3072, ffn 14336, 512 text tokens (no image tokens)
    cost_dims = {"dim": 3072, "ffn_dim": 14336, "context_tokens": 512}

    # ---------------------------------------------------------------- loading
    def model_folder(self, cfg: ModelConfig) -> Path:
        return loading.model_folder(cfg)

    def check_folder(self, folder: Path) -> None:
        loading.check_folder(folder)

    def build_tiny(self, folder: Path, seed: int = 0) -> None:
        from core.models.wan22.preset import build_tiny

        build_tiny(folder, seed=seed)

    def load(self, cfg: ModelConfig) -> Components:
        return loading.load_components(cfg, self)

    def pipeline(self, comp: Components) -> Any:
        """diffusers' image-to-video pipeline in its Wan2.2 TI2V mode (`expand_timesteps=True`)."""
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline(
            tokenizer=comp.tokenizer,
            text_encoder=comp.text_encoder,
            image_encoder=None,
            image_processor=None,
            transformer=comp.transformer,
            vae=comp.vae,
            scheduler=comp.scheduler,
            expand_timesteps=True,
        )

    # ---------------------------------------------------------------- encoders and conditioning
    def encode_image(self, comp: Components, images: Any) -> None:
        return None  # no image encoder: the image enters as the first latent frame

    def encode_condition(self, comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        return conditioning.encode_condition(comp, first_frame, num_frames)

    def model_input(self, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return conditioning.with_first_frame(noisy, condition)

    def apply_condition(self, latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return conditioning.with_first_frame(latents, condition)

    def reference_latent(self, model_input: torch.Tensor) -> torch.Tensor | None:
        """Frame 0 of the input: the clean image latent (`with_first_frame`); None for one frame (no image)."""
        return model_input[:, : self.geometry.noisy_channels, :1] if model_input.shape[2] > 1 else None

    def image_conditioned(self, latent_frames: int) -> bool:
        return latent_frames > 1  # one latent frame trains as text to image (conditioning.py)

    def timestep_input(self, timestep: torch.Tensor, condition: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        return conditioning.per_token_timestep(timestep, latents, self.geometry.patch)

    def context_tokens(self, comp: Components) -> int:
        return self.geometry.text_tokens

    def loss_region(self, tensor: torch.Tensor) -> torch.Tensor:
        """Frames 1.. only: frame 0 is the given image, never denoised (a one-frame clip: all of it)."""
        return conditioning.loss_frames(tensor)

    def model_id(self, cfg: ModelConfig) -> str:
        """As Wan2.1, but the tiny preset is `wan22-tiny-seed<N>`, so its caches never mix with Wan2.1's."""
        return super().model_id(cfg) if cfg.model_id or cfg.path else f"wan22-tiny-seed{cfg.seed}"


FAMILY = Wan22TI2V()
