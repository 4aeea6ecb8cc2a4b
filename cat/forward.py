"""`cat_forward`: `WanTransformer3DModel.forward` on a mixed fine/coarse token sequence.

It mirrors diffusers 0.42.1's forward step by step (rope, patch embedding, condition embedder,
timestep handling, blocks with gradient checkpointing, norm_out with scale_shift_table,
proj_out, unpatchify) but splits it into pieces that sequence parallelism can reuse:

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
import torch.nn.functional as F
from diffusers.utils.peft_utils import apply_lora_scale

from cat.allocation import Allocation
from cat.rope import rope_at
from cat.tokenizer import Layout, build_layout, coarse_correction, gather_patches, scatter_patches
from core.flow import NUM_TRAIN_TIMESTEPS  # Wan's flow-matching timesteps are sigma * 1000


def _grid_of(transformer: Any, hidden_states: torch.Tensor) -> tuple[int, int, int]:
    p_t, p_h, p_w = transformer.config.patch_size
    if (p_t, p_h, p_w) != (1, 2, 2):
        raise ValueError(f"CAT supports Wan's (1, 2, 2) patches, got {(p_t, p_h, p_w)}")
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
    layout = make_layout(transformer, hidden_states, allocation)
    if layout.uniform and stock_uniform:
        rotary = transformer.rope(hidden_states)
        tokens = transformer.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
        return tokens, rotary, layout, None
    patches = gather_patches(hidden_states, layout, pool=pool, sigma=sigma, generator=generator)  # (B, S, C, 2, 2)
    seen = patches[:, :, : transformer.config.out_channels].clone()
    tokens = embed_patches(transformer.patch_embedding, patches)
    rope = transformer.rope
    key = ("rotary", rope.t_dim, rope.h_dim, rope.w_dim, rope.freqs_cos.dtype, str(rope.freqs_cos.device),
           torch.is_inference_mode_enabled())  # inference tensors must not leak into autograd
    if key not in layout.cache:  # a Layout reused across denoising steps builds its tables once
        layout.cache[key] = rope_at(rope, layout.centres)
    rotary = layout.cache[key]
    return tokens, rotary, layout, seen


def embed_patches(patch_embedding: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(B, S, C, 2, 2) patches -> (B, S, D) through the patch embedding. A plain `nn.Conv3d` is
    applied as the equivalent matmul (CPU conv3d takes a slow path); anything else (a LoRA or
    other wrapper) is called as a module on the patches laid side by side as (B, C, 1, 2, 2S)."""
    if type(patch_embedding) is torch.nn.Conv3d:
        weight = patch_embedding.weight.flatten(1)  # (D, C*1*2*2), same (C, kt, kh, kw) order
        return F.linear(patches.flatten(2).to(weight.dtype), weight, patch_embedding.bias)
    b, s, c = patches.shape[:3]
    volume = patches.permute(0, 2, 3, 1, 4).reshape(b, c, 1, 2, 2 * s)
    return patch_embedding(volume).flatten(2).transpose(1, 2).contiguous()


def embed_conditions(
    transformer: Any,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None,
    layout: Layout,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(temb, timestep_proj, context) exactly as the stock forward builds them. A per-token
    timestep (B, F'H'W') (Wan 2.2 TI2V style) is read at each token's first cell."""
    if timestep.ndim == 2:
        if not layout.uniform:
            timestep = timestep[:, layout.first_cell.to(timestep.device)]
        ts_seq_len = timestep.shape[1]
        timestep = timestep.flatten()
    else:
        ts_seq_len = None
    temb, timestep_proj, context, context_image = transformer.condition_embedder(
        timestep, encoder_hidden_states, encoder_hidden_states_image, timestep_seq_len=ts_seq_len
    )
    if ts_seq_len is not None:
        timestep_proj = timestep_proj.unflatten(2, (6, -1))
    else:
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
    if context_image is not None:
        context = torch.concat([context_image, context], dim=1)
    return temb, timestep_proj, context


def run_blocks(
    transformer: Any,
    tokens: torch.Tensor,
    context: torch.Tensor,
    timestep_proj: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """The transformer blocks over a (B, S, D) sequence, with gradient checkpointing when the
    model has it enabled and gradients are on (as diffusers does)."""
    if torch.is_grad_enabled() and transformer.gradient_checkpointing:
        for block in transformer.blocks:
            tokens = transformer._gradient_checkpointing_func(block, tokens, context, timestep_proj, rotary)
    else:
        for block in transformer.blocks:
            tokens = block(tokens, context, timestep_proj, rotary)
    return tokens


def project_out(transformer: Any, tokens: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """norm_out modulated by scale_shift_table + temb, then proj_out: (B, S, C_out * 4)."""
    if temb.ndim == 3:
        shift, scale = (transformer.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
        shift, scale = shift.squeeze(2), scale.squeeze(2)
    else:
        shift, scale = (transformer.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
    shift, scale = shift.to(tokens.device), scale.to(tokens.device)
    tokens = (transformer.norm_out(tokens.float()) * (1 + scale) + shift).type_as(tokens)
    return transformer.proj_out(tokens)


def unpack(
    patches: torch.Tensor,
    layout: Layout,
    upsample: str = "nearest",
    *,
    noisy: torch.Tensor | None = None,
    packed_noisy: torch.Tensor | None = None,
    sigma: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, S, C_out * 4) projected tokens -> (B, C_out, F', 2H', 2W'), as the stock unpatchify
    for fine tokens; coarse outputs upsampled over their region (`nearest` or `bilinear`).

    Given the noisy channels `noisy` (x_s), the patches the model saw (`packed_noisy`, from
    `pack_with_patches`) and the noise level `sigma` ((B,) or per cell (B, F'H'W')), coarse
    cells also get `cat.tokenizer.coarse_correction`: the velocity that removes the noise inside
    a coarse token's region, which an upsampled token output cannot carry (docs/cat.md)."""
    b, s, _ = patches.shape
    per_token = patches.reshape(b, s, 2, 2, -1).permute(0, 1, 4, 2, 3)  # proj_out order is (kh, kw, C)
    out = scatter_patches(per_token, layout, upsample=upsample)
    if noisy is None or packed_noisy is None or sigma is None or layout.uniform:
        return out
    correction = coarse_correction(noisy, packed_noisy, sigma, layout, upsample)
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
    (`unpack`, docs/cat.md); off only for a loss whose target omits it too (stage 2). An
    `Allocation` is turned into index tensors on every call; pass a prebuilt `Layout` to skip that."""
    layout = make_layout(transformer, hidden_states, allocation)
    sigma = None
    if pool == "renoise" and not layout.uniform:
        sigma = (timestep.float() if timestep.ndim == 1 else timestep.float().mean(dim=1)) / NUM_TRAIN_TIMESTEPS
    tokens, rotary, layout, seen = pack_with_patches(
        transformer, hidden_states, layout, pool=pool, sigma=sigma, generator=generator
    )
    temb, timestep_proj, context = embed_conditions(
        transformer, timestep, encoder_hidden_states, encoder_hidden_states_image, layout
    )
    tokens = run_blocks(transformer, tokens, context, timestep_proj, rotary)
    patches = project_out(transformer, tokens, temb)
    if not correct or seen is None:
        return unpack(patches, layout, upsample=upsample)
    noisy = hidden_states[:, : seen.shape[2]]
    return unpack(patches, layout, upsample=upsample, noisy=noisy, packed_noisy=seen,
                  sigma=timestep.float() / NUM_TRAIN_TIMESTEPS)
