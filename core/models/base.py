"""The model-family protocol: everything cinelora needs to know about a video model, in one place.

A family (one folder under ``core/models/``) answers four kinds of question:

- geometry (`Geometry`): how pixels become latents and latents become tokens; `cat/` and the
  samplers receive it as data and name no model constant;
- loading: components from a local diffusers-layout folder, and a tiny random preset built
  offline and loaded through that same from-folder path;
- encoders and conditioning: prompt, image, video, the condition tensor, the transformer input;
- LoRA target presets and the diffusers -> original (ComfyUI) key map;
- the transformer-forward pieces that CAT (`cat.forward`) and sequence parallelism
  (`infer.parallel`) run in place of the stock forward: patch embedding, rotary tables,
  condition embedding, the block loop, the output projection, self-attention projections.

Adding a family means adding a folder and one line in `core.models.registry`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from core.schema import ModelConfig


@dataclass(frozen=True)
class Geometry:
    """Pixels -> latents -> tokens of one family, as numbers.

    First-frame rule (causal video VAEs): latent frame 0 encodes pixel frame 0 alone; every
    later latent frame f encodes the `vae_t` pixel frames vae_t*(f-1)+1 .. vae_t*f. A clip
    therefore has 1 + vae_t*k pixel frames for 1 + k latent frames."""

    vae_t: int  # pixel frames per latent frame after the first
    vae_s: int  # pixels per latent pixel (each side)
    patch: tuple[int, int, int]  # transformer patch (frames, rows, cols) in latent units
    noisy_channels: int  # latent channels the model denoises (first channels of its input)
    condition_channels: int  # channels concatenated after them (0: no channel conditioning)
    text_tokens: int  # text-encoder context length the model expects
    num_train_timesteps: float = 1000.0  # timestep = sigma * num_train_timesteps

    @property
    def cell_px(self) -> int:
        """Pixels per side of one patch-grid cell (VAE stride x spatial patch)."""
        return self.vae_s * self.patch[1]

    @property
    def in_channels(self) -> int:
        return self.noisy_channels + self.condition_channels

    def latent_frames(self, num_frames: int) -> int:
        """Latent frames of a clip of `num_frames` (= 1 + vae_t k) pixel frames."""
        return 1 + (num_frames - 1) // self.vae_t

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that `latent_frames` latent frames decode to."""
        return 1 + self.vae_t * (latent_frames - 1)

    def frames_of_latent(self, f: int) -> range:
        """Pixel frames encoded by latent frame f (the first-frame rule)."""
        return range(0, 1) if f == 0 else range(self.vae_t * (f - 1) + 1, self.vae_t * f + 1)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.vae_s, width // self.vae_s

    def patch_grid(self, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
        """The transformer's (F', H', W') patch grid for a pixel clip."""
        return (
            self.latent_frames(num_frames) // self.patch[0],
            height // self.vae_s // self.patch[1],
            width // self.vae_s // self.patch[2],
        )

    def pixel_shape(self, grid: tuple[int, int, int]) -> tuple[int, int, int]:
        """(T, H, W) of the pixel clip whose patch grid is `grid` (inverse of `patch_grid`)."""
        f_, h_, w_ = grid
        return self.pixel_frames(f_ * self.patch[0]), self.cell_px * h_, self.vae_s * self.patch[2] * w_


@dataclass
class Components:
    """The loaded parts of one model; `family` answers every model-specific question about them.
    Families without an image encoder leave `image_encoder` / `image_processor` None."""

    transformer: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    image_encoder: Any
    image_processor: Any
    scheduler: Any
    model_id: str
    folder: Path
    device: torch.device
    dtype: torch.dtype
    family: ModelFamily | None = None

    def pipeline(self) -> Any:
        """The family's diffusers pipeline over these components."""
        if self.family is None:
            raise ValueError("these components carry no model family; load them with core.models.load_components")
        return self.family.pipeline(self)


Rotary = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (1, S, 1, head_dim)


class ModelFamily(ABC):
    """One model family. Subclass, set `name` and `geometry`, implement the abstract methods,
    and register the instance in `core.models.registry`."""

    name: str
    geometry: Geometry
    # LoRA target presets: preset name -> per-block module suffixes (diffusers names)
    lora_targets: Mapping[str, tuple[str, ...]]
    # diffusers module suffix -> original checkpoint name (ComfyUI and most trainers' exports)
    original_keys: Mapping[str, str]
    # the full-size model's cost-model dimensions: {"dim", "ffn_dim", "context_tokens"} (cat.cost)
    cost_dims: Mapping[str, int] = {}

    # ---------------------------------------------------------------- loading
    @abstractmethod
    def model_folder(self, cfg: ModelConfig) -> Path:
        """The folder to load from: `model.path` (checked), or the tiny preset's cache (built on first use)."""

    @abstractmethod
    def check_folder(self, folder: Path) -> None:
        """One ConfigError listing what the family's diffusers folder must contain."""

    @abstractmethod
    def build_tiny(self, folder: Path, seed: int = 0) -> None:
        """Write the tiny random preset in the diffusers layout (atomically), offline."""

    @abstractmethod
    def load(self, cfg: ModelConfig) -> Components:
        """Every component from `model_folder(cfg)` with the configured dtype, device and memory options."""

    @abstractmethod
    def pipeline(self, comp: Components) -> Any:
        """The stock diffusers pipeline over `comp` (the reference the sampler is tested against)."""

    def accepts(self, transformer: Any) -> bool:
        """Whether `transformer` belongs to this family (used when only a transformer is at hand)."""
        conf = getattr(transformer, "config", None)
        return (
            conf is not None
            and getattr(conf, "in_channels", None) == self.geometry.in_channels
            and getattr(conf, "out_channels", None) == self.geometry.noisy_channels
        )

    def image_branch_targets(self) -> tuple[str, ...]:
        """The image-context projections `lora.image_branch=true` adds; one-line refusal for a family
        without an image branch."""
        if "image_branch" not in self.lora_targets:
            from core.config import ConfigError

            raise ConfigError(
                f"lora.image_branch=true: model.family {self.name} has no image branch (its "
                "cross-attention reads text only); drop lora.image_branch"
            )
        return tuple(self.lora_targets["image_branch"])

    # ---------------------------------------------------------------- encoders and conditioning
    @abstractmethod
    def encode_prompt(self, comp: Components, prompts: list[str]) -> torch.Tensor:
        """(B, text_tokens, text_dim) text context, as the family's pipeline builds it."""

    @abstractmethod
    def encode_image(self, comp: Components, images: Any) -> torch.Tensor | None:
        """Image-encoder context of the conditioning image(s); None for families without one."""

    @abstractmethod
    def encode_video(self, comp: Components, video: torch.Tensor) -> torch.Tensor:
        """Normalised latents (B, noisy_channels, F', H/vae_s, W/vae_s) of (B, 3, T, H, W) in [-1, 1]."""

    @abstractmethod
    def encode_condition(self, comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """The condition tensor for a first frame (B, 3, H, W) in [-1, 1] and a clip length."""

    @abstractmethod
    def model_input(self, noisy: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """The transformer's input from the noisy latent and the condition."""

    def apply_condition(self, latents: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """Latents with the condition imposed on them (e.g. a clean first latent frame); default: unchanged."""
        return latents

    def timestep_input(self, timestep: torch.Tensor, condition: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """The timestep the transformer is given: (B,), or per token (B, F'H'W'); default: as is."""
        return timestep

    def still_latent(self, comp: Components, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Normalised latents (B, noisy_channels, F', h, w) of the first frame (B, 3, H, W) held still
        for `num_frames` frames: what a static region's latent is in every latent frame. CAT's
        reference detail reads it; latent frame 0 alone would not do, since a causal VAE encodes
        frame 0 alone and later frames four at a time (a static clip's latent frames differ)."""
        video = first_frame.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
        return self.encode_video(comp, video)

    def reference_latent(self, model_input: torch.Tensor) -> torch.Tensor | None:
        """The conditioning image's clean latent (B, noisy_channels, 1, h, w) read off a transformer
        input, or None when the input carries no image (CAT's reference detail needs it); default None."""
        return None

    def image_conditioned(self, latent_frames: int) -> bool:
        """Whether a clip of `latent_frames` latent frames is conditioned on its first frame (then
        `reference_latent` finds that frame in the input); known without a model, so data.prepare
        computes the reference map (`Complexity.spatial_ref`) for exactly these; default False."""
        return False

    def loss_region(self, tensor: torch.Tensor) -> torch.Tensor:
        """The part of a (B, C, F', H, W) prediction or target the training loss scores (a frame the
        model is given, such as a clean first frame, is left out); default: all of it."""
        return tensor

    def model_id(self, cfg: ModelConfig) -> str:
        """The id recorded in caches and exports: `model.model_id`, else the folder name, else the
        tiny preset's name (known without loading weights)."""
        if cfg.model_id:
            return cfg.model_id
        return Path(cfg.path).expanduser().name if cfg.path else f"tiny-seed{cfg.seed}"

    def normalize_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        return normalize_latents(vae, latents)

    def denormalize_latents(self, vae: Any, latents: torch.Tensor) -> torch.Tensor:
        return denormalize_latents(vae, latents)

    def context_tokens(self, comp: Components) -> int:
        """Cross-attention context length (text plus any image tokens), for the cost model."""
        return self.geometry.text_tokens

    # ---------------------------------------------------------------- transformer-forward pieces
    @abstractmethod
    def stock_tokens(self, transformer: Any, hidden_states: torch.Tensor) -> tuple[torch.Tensor, Rotary]:
        """The stock patchify of the full grid: (B, S, D) tokens and their rotary tables."""

    @abstractmethod
    def embed_patches(self, transformer: Any, patches: torch.Tensor) -> torch.Tensor:
        """(B, S, C, *patch) token patches -> (B, S, D) through the model's own patch embedding."""

    @abstractmethod
    def rope_at(self, transformer: Any, positions: torch.Tensor) -> Rotary:
        """Rotary tables at (N, 3) (frame, row, col) positions in patch units, fractional allowed;
        equal to the stock tables at integer positions."""

    @abstractmethod
    def rope_cache_key(self, transformer: Any) -> tuple:
        """What the rotary tables depend on (dims, dtype, device), to cache them per layout."""

    @abstractmethod
    def embed_conditions(
        self,
        transformer: Any,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_hidden_states_image: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(temb, timestep_proj, context) as the stock forward builds them; `timestep` is (B,) or
        per token (B, S) in sequence order."""

    @abstractmethod
    def run_blocks(
        self,
        transformer: Any,
        tokens: torch.Tensor,
        context: torch.Tensor,
        timestep_proj: torch.Tensor,
        rotary: Rotary,
    ) -> torch.Tensor:
        """The transformer blocks over a (B, S, D) sequence (gradient checkpointing as the stock forward)."""

    @abstractmethod
    def project_out(self, transformer: Any, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """Output norm/modulation and projection: (B, S, noisy_channels * prod(patch))."""

    @abstractmethod
    def blocks(self, transformer: Any) -> Sequence[torch.nn.Module]:
        """The transformer blocks in forward order (called with (tokens, context, timestep_proj, rotary))."""

    @abstractmethod
    def self_attention(self, block: torch.nn.Module) -> Any:
        """The block's self-attention module (its processor is swapped for sequence parallelism)."""

    @abstractmethod
    def num_heads(self, transformer: Any) -> int:
        """Attention heads per layer (sequence parallelism splits them)."""

    @abstractmethod
    def attention_qkv(
        self, attn: Any, hidden_states: torch.Tensor, rotary: Rotary | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention query, key, value (B, S, heads, head_dim) of local tokens, rotary applied."""

    @abstractmethod
    def attention_out(self, attn: Any, out: torch.Tensor) -> torch.Tensor:
        """Self-attention output projection of (B, S, heads * head_dim)."""

    @abstractmethod
    def edge_params(self, transformer: Any) -> list[torch.nn.Parameter]:
        """Parameters the forward pieces read outside a submodule's forward (gathered under ZeRO-3)."""


def _latent_stats(vae: Any, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=latents.device, dtype=latents.dtype).view(shape)
    std = torch.tensor(vae.config.latents_std, device=latents.device, dtype=latents.dtype).view(shape)
    return mean, std


def normalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """(latents - mean) / std with the VAE config's per-channel statistics (diffusers' Wan VAE convention)."""
    mean, std = _latent_stats(vae, latents)
    return (latents - mean) * (1.0 / std)


def denormalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    mean, std = _latent_stats(vae, latents)
    return latents * std + mean
