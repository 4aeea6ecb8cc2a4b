"""`cat_forward`: the transformer's forward on a mixed fine/coarse token sequence.

The model family (`core.models`, found from the transformer) supplies the stock forward split
into pieces (rope, patch embedding, condition embedder, blocks, output projection; for Wan2.1 in
`core.models.wan21.forward`); this module packs, unpacks and runs them, so sequence
parallelism can reuse them:

    tokens, rotary, layout = pack(transformer, hidden_states, allocation)   # (B, S, D), (cos, sin) per token
    temb, timestep_proj, context = embed_conditions(transformer, timestep, text, image, layout)
    tokens = run_blocks(transformer, tokens, context, timestep_proj, rotary)  # the only per-block loop
    patches = project_out(transformer, tokens, temb)                         # (B, S, C_out * 4)
    out = unpack(patches, layout)                                            # (B, C_out, F', H, W)

The blocks never see the grid: the sequence is a plain (B, S, D) tensor with its rotary
(cos, sin) of shape (1, S, 1, head_dim), so a Ulysses wrapper can shard dim 1 of both.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.utils.peft_utils import apply_lora_scale

from cat.allocation import Allocation
from cat.tokenizer import Layout, build_layout, coarse_correction, gather_patches, scatter_patches
from core.models import ModelFamily, family_of


def _grid_of(transformer: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
    p_t, p_h, p_w = transformer.config.patch_size
    if (p_t, p_h, p_w) != (1, 2, 2):
        raise ValueError(f"CAT supports (1, 2, 2) patches, got {(p_t, p_h, p_w)}")
    _, _, f, h, w = hidden_states.shape
    return f // p_t, h // p_h, w // p_w


def make_layout(
    transformer: Any, hidden_states: torch.Tensor, allocation: Allocation | Layout | None
) -> Layout:
    """A Layout on the latent's device for an allocation (None = uniform); a Layout passes through
    (build it once with `cat.tokenizer.build_layout` and reuse it across denoising steps)."""
    grid = _grid_of(transformer, hidden_states)
    if isinstance(allocation, Layout):
        layout = allocation
    else:
        if allocation is not None and allocation.grid != grid:
            raise ValueError(f"allocation grid {allocation.grid} != the latent's patch grid {grid}")
        layout = build_layout(allocation, grid)
    if layout.grid != grid:
        raise ValueError(f"layout grid {layout.grid} != the latent's patch grid {grid}")
    return layout.to(hidden_states.device)


def pack(
    transformer: Any,
    hidden_states: torch.Tensor,
    allocation: Allocation | Layout | None = None,
    pool: str = "mean",
    sigma: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stock_uniform: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Layout]:
    """Embed the kept tokens: (B, S, D) tokens, rotary (cos, sin) each (1, S, 1, head_dim), layout.

    A uniform allocation takes the stock path (full patch conv, `transformer.rope`), so it is
    the stock computation exactly. Otherwise only the kept (possibly pooled) patches go through
    `transformer.patch_embedding` (the module itself, so wrappers such as LoRA still apply),
    laid side by side as a (B, C, 1, 2, 2S) volume, and RoPE is built at token centres."""
    tokens, rotary, layout, _ = pack_with_patches(transformer, hidden_states, allocation, pool, sigma, generator,
                                                  stock_uniform)
    return tokens, rotary, layout


def pack_with_patches(
    transformer: Any,
    hidden_states: torch.Tensor,
    allocation: Allocation | Layout | None = None,
    pool: str = "mean",
    sigma: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    stock_uniform: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], Layout, torch.Tensor | None]:
    """`pack`, plus the noisy channels (the first `out_channels`) of the token patches the model
    saw, (B, S, C_out, 2, 2), which the coarse-cell correction of `unpack` needs (None on the
    stock path)."""
    family = family_of(transformer)
    layout = make_layout(transformer, hidden_states, allocation)
    if layout.uniform and stock_uniform:
        tokens, rotary = family.stock_tokens(transformer, hidden_states)
        return tokens, rotary, layout, None
    noisy_channels = family.geometry.noisy_channels
    patches = gather_patches(hidden_states, layout, pool=pool, sigma=sigma, generator=generator,
                             noisy_channels=noisy_channels)  # (B, S, C, 2, 2)
    seen = patches[:, :, :noisy_channels].clone()
    tokens = family.embed_patches(transformer, patches)
    key = family.rope_cache_key(transformer) + (torch.is_inference_mode_enabled(),)  # inference tensors stay out of autograd
    if key not in layout.cache:  # a Layout reused across denoising steps builds its tables once
        layout.cache[key] = family.rope_at(transformer, layout.centres)
    rotary = layout.cache[key]
    return tokens, rotary, layout, seen


def embed_conditions(
    transformer: Any,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None,
    layout: Layout,
    family: ModelFamily | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(temb, timestep_proj, context) exactly as the stock forward builds them. A per-token
    timestep (B, F'H'W') (Wan 2.2 TI2V style) is read at each token's first cell."""
    if timestep.ndim == 2 and not layout.uniform:
        timestep = timestep[:, layout.first_cell.to(timestep.device)]
    family = family or family_of(transformer)
    return family.embed_conditions(transformer, timestep, encoder_hidden_states, encoder_hidden_states_image)


def run_blocks(
    transformer: Any,
    tokens: torch.Tensor,
    context: torch.Tensor,
    timestep_proj: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    family: ModelFamily | None = None,
) -> torch.Tensor:
    """The family's transformer blocks over a (B, S, D) sequence (gradient checkpointing as stock)."""
    return (family or family_of(transformer)).run_blocks(transformer, tokens, context, timestep_proj, rotary)


def project_out(transformer: Any, tokens: torch.Tensor, temb: torch.Tensor, family: ModelFamily | None = None) -> torch.Tensor:
    """The family's output norm and projection: (B, S, C_out * 4)."""
    return (family or family_of(transformer)).project_out(transformer, tokens, temb)


def unpack(
    patches: torch.Tensor,
    layout: Layout,
    upsample: str = "nearest",
    *,
    noisy: torch.Tensor | None = None,
    packed_noisy: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, S, C_out * 4) projected tokens -> (B, C_out, F', 2H', 2W'), as the stock unpatchify
    for fine tokens; coarse outputs upsampled over their region (`nearest` or `bilinear`).

    Given the noisy channels `noisy` (x_s), the patches the model saw (`packed_noisy`, from
    `pack_with_patches`) and the noise level `sigma` ((B,) or per cell (B, F'H'W')), coarse
    cells also get `cat.tokenizer.coarse_correction`: the velocity that removes the noise inside
    a coarse token's region, which an upsampled token output cannot carry (docs/cat.md); tokens
    the allocation flags for reference detail also restore the sub-token detail of `reference`,
    the conditioning image's clean latent (B, C_out, 1, 2H', 2W')."""
    b, s, _ = patches.shape
    per_token = patches.reshape(b, s, 2, 2, -1).permute(0, 1, 4, 2, 3)  # proj_out order is (kh, kw, C)
    out = scatter_patches(per_token, layout, upsample=upsample)
    if noisy is None or packed_noisy is None or sigma is None or layout.uniform:
        return out
    correction = coarse_correction(noisy, packed_noisy, sigma, layout, upsample, reference)
    return (out.float() + correction).to(out.dtype)


@apply_lora_scale("attention_kwargs")
def cat_forward(
    transformer: Any,
    hidden_states: torch.Tensor,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None = None,
    allocation: Allocation | Layout | None = None,
    *,
    upsample: str = "nearest",
    pool: str = "mean",
    generator: torch.Generator | None = None,
    correct: bool = True,
    sigma: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """`transformer(hidden_states, timestep, encoder_hidden_states, encoder_hidden_states_image)
    .sample` with the tokens of `allocation` (None = uniform: the stock result).

    Same inputs and output shape as `WanTransformer3DModel.forward`; returns the tensor
    (B, C_out, F', H, W) (what `.sample` holds). It runs the model's own modules, so peft LoRA
    layers, gradient checkpointing (`transformer.gradient_checkpointing`), bf16 and autograd
    work as in the stock forward; `attention_kwargs={"scale": s}` scales LoRA like diffusers.
    Batches: every sample of the batch shares the one partition (no padding, no mask); use
    `cat.allocate` on the batch (max complexity over samples) or run samples one by one.
    `upsample`: `nearest` or `bilinear` for coarse outputs. `pool`: `mean` (default: plain
    average of the region, deterministic) or `renoise` (restores the noise std of averaged
    noisy channels to the timestep's sigma = t / 1000, using `generator`). `correct` (default
    on): coarse cells get the velocity that removes the noise inside their token's region
    (`unpack`, docs/cat.md); off only for a loss whose target omits it too (stage 2). `sigma`:
    the latent's true noise level ((B,) or per cell), for the correction and `renoise`; default
    timestep / 1000, exact for Euler, not for UniPC's integer timesteps (the sampler passes the
    scheduler's sigma). `reference`: the conditioning image's clean latent (B, C_out, 1, 2H', 2W')
    for tokens the allocation flags for reference detail; default: read off the model input by
    the model family (`ModelFamily.reference_latent`: Wan2.1's condition channels, Wan2.2's clean
    frame 0). An `Allocation` is turned into index tensors on every call; pass a prebuilt `Layout`
    to skip that."""
    family = family_of(transformer)
    steps = family.geometry.num_train_timesteps  # timestep = sigma * steps
    layout = make_layout(transformer, hidden_states, allocation)
    if sigma is None:
        sigma = timestep.float() / steps
    pool_sigma = None
    if pool == "renoise" and not layout.uniform:
        pool_sigma = sigma.float() if sigma.ndim <= 1 else sigma.float().mean(dim=1)
    tokens, rotary, layout, seen = pack_with_patches(
        transformer, hidden_states, layout, pool=pool, sigma=pool_sigma, generator=generator
    )
    temb, timestep_proj, context = embed_conditions(
        transformer, timestep, encoder_hidden_states, encoder_hidden_states_image, layout, family
    )
    tokens = run_blocks(transformer, tokens, context, timestep_proj, rotary, family)
    patches = project_out(transformer, tokens, temb, family)
    if not correct or seen is None:
        return unpack(patches, layout, upsample=upsample)
    noisy = hidden_states[:, : seen.shape[2]]
    if reference is None and bool(layout.detail_cells.any()):
        reference = family.reference_latent(hidden_states)
    return unpack(patches, layout, upsample=upsample, noisy=noisy, packed_noisy=seen, sigma=sigma.float(),
                  reference=reference)
