"""`Wan21I2V`: the Wan2.1 I2V family (14B / 480P / 720P diffusers folders, and the tiny preset)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from core.models.base import Components, ModelFamily, Rotary
from core.models.wan21 import attention, conditioning, forward, loading, rope
from core.models.wan21.geometry import GEOMETRY
from core.models.wan21.lora import DIFFUSERS_TO_ORIGINAL, LORA_TARGETS
from core.schema import ModelConfig


class Wan21I2V(ModelFamily):
    """Wan2.1 image-to-video: UMT5 text + CLIP image context, 20-channel first-frame condition."""

    name = loading.FAMILY_NAME
    geometry = GEOMETRY
    lora_targets = LORA_TARGETS
    original_keys = DIFFUSERS_TO_ORIGINAL
    # Wan2.1-I2V-14B: 40 heads x 128 = 5120, FFN 13824; context 512 text + 257 CLIP image tokens.
    cost_dims = {"dim": 5120, "ffn_dim": 13824, "context_tokens": 769}

    # ---------------------------------------------------------------- loading
    def model_folder(self, cfg: ModelConfig) -> Path:
        return loading.model_folder(cfg)

    def check_folder(self, folder: Path) -> None:
        loading.check_folder(folder)

    def build_tiny(self, folder: Path, seed: int = 0) -> None:
        loading.build_tiny(folder, seed=seed)

    def load(self, cfg: ModelConfig) -> Components:
        return loading.load_components(cfg)

    def pipeline(self, comp: Components) -> Any:
        from diffusers import WanImageToVideoPipeline

        return WanImageToVideoPipeline(
            tokenizer=comp.tokenizer,
            text_encoder=comp.text_encoder,
            image_encoder=comp.image_encoder,
            image_processor=comp.image_processor,
            transformer=comp.transformer,
            vae=comp.vae,
            scheduler=comp.scheduler,
        )

    # ---------------------------------------------------------------- encoders and conditioning
    def encode_prompt(self, comp: Components, prompts: list[str]) -> torch.Tensor:
        return conditioning.encode_prompt(comp, prompts)

    def encode_image(self, comp: Components, images: Any) -> torch.Tensor:
        return conditioning.encode_image(comp, images)

    def encode_video(self, comp: Components, video: torch.Tensor) -> torch.Tensor:
        return conditioning.encode_video(comp, video)

    def encode_condition(self, comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        return conditioning.encode_condition(comp, first_frame, num_frames)

    def model_input(self, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return conditioning.model_input(noisy, condition)

    def reference_latent(self, model_input: torch.Tensor) -> torch.Tensor | None:
        return conditioning.reference_latent(model_input)

    def image_conditioned(self, latent_frames: int) -> bool:
        return True  # image-to-video: every clip, a one-frame keyframe too, is given its first frame

    def context_tokens(self, comp: Components) -> int:
        """512 text tokens + the CLIP image tokens (patches + the class token)."""
        vision = comp.image_encoder.config
        return self.geometry.text_tokens + (vision.image_size // vision.patch_size) ** 2 + 1

    # ---------------------------------------------------------------- transformer-forward pieces
    def stock_tokens(self, transformer: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, Rotary]:
        return forward.stock_tokens(transformer, hidden_states)

    def embed_patches(self, transformer: Any, patches: torch.Tensor) -> torch.Tensor:
        return forward.embed_patches(transformer.patch_embedding, patches)

    def rope_at(self, transformer: Any, positions: torch.Tensor) -> Rotary:
        return rope.rope_at(transformer.rope, positions)

    def rope_cache_key(self, transformer: Any) -> tuple:
        r = transformer.rope
        return ("rotary", r.t_dim, r.h_dim, r.w_dim, r.freqs_cos.dtype, str(r.freqs_cos.device))

    def embed_conditions(
        self,
        transformer: Any,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return forward.embed_conditions(transformer, timestep, encoder_hidden_states, encoder_hidden_states_image)

    def run_blocks(
        self,
        transformer: Any,
        tokens: torch.Tensor,
        context: torch.Tensor,
        timestep_proj: torch.Tensor,
        rotary: Rotary,
    ) -> torch.Tensor:
        return forward.run_blocks(transformer, tokens, context, timestep_proj, rotary)

    def project_out(self, transformer: Any, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        return forward.project_out(transformer, tokens, temb)

    def blocks(self, transformer: Any) -> Sequence[torch.nn.Module]:
        return transformer.blocks

    def self_attention(self, block: torch.nn.Module) -> Any:
        return block.attn1

    def num_heads(self, transformer: Any) -> int:
        return int(transformer.config.num_attention_heads)

    def attention_qkv(
        self, attn: Any, hidden_states: torch.Tensor, rotary: Rotary | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return attention.attention_qkv(attn, hidden_states, rotary)

    def attention_out(self, attn: Any, out: torch.Tensor) -> torch.Tensor:
        return attention.attention_out(attn, out)

    def edge_params(self, transformer: Any) -> list[torch.nn.Parameter]:
        """The model's own scale_shift_table (read in project_out) and the patch embedding's weight
        (used as a matrix by embed_patches)."""
        return list(transformer.parameters(recurse=False)) + list(transformer.patch_embedding.parameters())


FAMILY = Wan21I2V()
