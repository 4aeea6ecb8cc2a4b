"""The self-attention pieces of diffusers 0.42.1's `WanAttnProcessor.__call__` that sequence
parallelism runs around its own attention core: projections, QK-norm, interleaved rotary, output
projection. Guarded by tests/test_model_guard.py."""

from __future__ import annotations

from typing import Any

import torch


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding (same arithmetic as diffusers' WanAttnProcessor)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def attention_qkv(
    attn: Any, hidden_states: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-attention (B, S, heads, head_dim) query, key, value; QK-norm across heads, rotary applied."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
    value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
    if rotary is not None:
        query, key = apply_rotary(query, *rotary), apply_rotary(key, *rotary)
    return query, key, value


def attention_out(attn: Any, out: torch.Tensor) -> torch.Tensor:
    """to_out[0] (linear) then to_out[1] (dropout) of (B, S, heads * head_dim)."""
    return attn.to_out[1](attn.to_out[0](out))
