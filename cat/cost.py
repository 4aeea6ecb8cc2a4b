"""The cost model CAT is judged against (docs/cat.md, ../shared/guide/cat-design.md).

Per transformer block and token: linear MACs 4 d^2 (self-attention q, k, v, o) + 2 d^2
(cross-attention q, o) + 2 d F (FFN); self-attention scores and weighted sum 2 N d; cross-
attention 2 N_ctx d. Everything else (norms, modulation, RoPE, patch embedding, the context's
own k/v projections, which do not depend on N) is left out, so the ideal is a little optimistic
when few tokens remain. The ideal speedup of N' tokens over N is cost(N) / cost(N').
"""

from __future__ import annotations

from typing import Any


def block_macs(tokens: float, dim: int, ffn_dim: int, context_tokens: int) -> float:
    """Multiply-accumulates of one transformer block (Wan layout) on `tokens` tokens."""
    n = float(tokens)
    linear = 4 * dim * dim + 2 * dim * dim + 2 * dim * ffn_dim
    return n * (linear + 2 * context_tokens * dim) + 2 * n * n * dim


def forward_macs(tokens: int, dim: int, ffn_dim: int, context_tokens: int, num_layers: int = 1) -> float:
    return num_layers * block_macs(tokens, dim, ffn_dim, context_tokens)


def ideal_speedup(tokens_uniform: float, tokens_cat: float, dim: int, ffn_dim: int, context_tokens: int) -> float:
    """cost(tokens_uniform) / cost(tokens_cat) under the cost model (the layer count cancels).
    `context_tokens`: cross-attention context length (the family's `context_tokens`)."""
    return block_macs(tokens_uniform, dim, ffn_dim, context_tokens) / block_macs(tokens_cat, dim, ffn_dim, context_tokens)


def attention_share(tokens: int, dim: int, ffn_dim: int, context_tokens: int) -> float:
    """Fraction of a block's MACs in self-attention (2 N d per token)."""
    n = float(tokens)
    return 2 * n * n * dim / block_macs(tokens, dim, ffn_dim, context_tokens)


def model_dims(transformer: Any) -> tuple[int, int]:
    """(inner dim, FFN dim) of a `WanTransformer3DModel` from its config."""
    cfg = transformer.config
    return int(cfg.num_attention_heads * cfg.attention_head_dim), int(cfg.ffn_dim)
