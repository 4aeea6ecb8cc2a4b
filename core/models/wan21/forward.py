"""`WanTransformer3DModel.forward` (diffusers 0.42.1) split into the pieces CAT and sequence
parallelism run in its place; each piece is the stock code, step for step, on a (B, S, D)
token sequence. Guarded by tests/test_model_guard.py: when the installed diffusers' forward
changes, that test names this module to re-check.

    tokens, rotary = stock_tokens(transformer, hidden_states)            # or embed_patches + rope_at
    temb, timestep_proj, context = embed_conditions(transformer, timestep, text, image)
    tokens = run_blocks(transformer, tokens, context, timestep_proj, rotary)
    patches = project_out(transformer, tokens, temb)                    # (B, S, C_out * 4)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def stock_tokens(
    transformer: Any, hidden_states: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """The stock patchify of the full grid: rope tables, then patch embedding (as the stock forward)."""
    rotary = transformer.rope(hidden_states)
    tokens = transformer.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()
    return tokens, rotary


def embed_patches(patch_embedding: torch.nn.Module, patches: torch.Tensor) -> torch.Tensor:
    """(B, S, C, 1, 2, 2) or (B, S, C, 2, 2) patches -> (B, S, D) through the patch embedding. A
    plain `nn.Conv3d` is applied as the equivalent matmul (CPU conv3d takes a slow path);
    anything else (a LoRA or other wrapper) is called as a module on the patches laid side by
    side as (B, C, 1, 2, 2S)."""
    if type(patch_embedding) is torch.nn.Conv3d:
        weight = patch_embedding.weight.flatten(1)  # (D, C*1*2*2), same (C, kt, kh, kw) order
        return F.linear(patches.flatten(2).to(weight.dtype), weight, patch_embedding.bias)
    b, s, c = patches.shape[:3]
    volume = patches.reshape(b, s, c, 2, 2).permute(0, 2, 3, 1, 4).reshape(b, c, 1, 2, 2 * s)
    return patch_embedding(volume).flatten(2).transpose(1, 2).contiguous()


def embed_conditions(
    transformer: Any,
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    encoder_hidden_states_image: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(temb, timestep_proj, context) exactly as the stock forward builds them; `timestep` is
    (B,) or per token (B, S) (Wan 2.2 TI2V style)."""
    if timestep.ndim == 2:
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
