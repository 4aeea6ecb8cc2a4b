"""3D RoPE at fractional positions, built with Wan's own frequency split (CAT's coarse tokens).

Mirrors `WanRotaryPosEmbed.forward` of diffusers 0.42.1 (guarded by tests/test_model_guard.py).

diffusers' `WanRotaryPosEmbed` is a lookup of integer positions (frame, row, col of a patch). A
coarse token sits at the centre of what it covers (e.g. row 2.5 for rows 2..3), so its cos/sin
are rebuilt from the same formula: head_dim split t/h/w = hd - 4(hd//6), 2(hd//6), 2(hd//6);
per axis angle = pos * theta^(-2i/d) in float64, cos/sin repeated interleaved (x0 x0 x1 x1 ..)
because `apply_rotary_emb` reads cos[..., 0::2] and sin[..., 1::2]; then cast like the stock
buffers (float32 unless the rope module was cast). At integer positions the tables equal the
stock ones bit for bit.
"""

from __future__ import annotations

import torch

ROPE_THETA = 10000.0  # WanRotaryPosEmbed's default; diffusers' Wan never passes another


def axis_dims(rope: torch.nn.Module) -> tuple[int, int, int]:
    """(t_dim, h_dim, w_dim) of a `WanRotaryPosEmbed`."""
    return int(rope.t_dim), int(rope.h_dim), int(rope.w_dim)


def _axis_tables(dim: int, count: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (count, dim) float32 at positions 0, 0.5, 1, ... (count of them), Wan's formula."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    angles = torch.outer(torch.arange(count, dtype=torch.float64, device=device) / 2, freqs)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


def rope_at(
    rope: torch.nn.Module, positions: torch.Tensor, theta: float = ROPE_THETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (1, N, 1, head_dim) for (N, 3) (frame, row, col) positions in patch units
    (fractional allowed), in the layout and dtype `WanRotaryPosEmbed.forward` returns.

    Positions on the half-integer lattice (all CAT token centres) are looked up in per-axis
    tables built at 0, 0.5, 1, ... (fast for 10^5 tokens); any other position is computed
    directly. Both use the same float64 products, so the values agree bit for bit."""
    device = rope.freqs_cos.device
    pos = positions.to(device=device, dtype=torch.float64)
    doubled = pos * 2
    on_lattice = bool(torch.equal(doubled, doubled.round())) and bool((pos >= 0).all())
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axis_dims(rope)):
        if on_lattice:
            index = doubled[:, axis].long()
            cos_t, sin_t = _axis_tables(dim, int(index.max()) + 1 if len(index) else 1, theta, device)
            cos_parts.append(cos_t[index])
            sin_parts.append(sin_t[index])
        else:
            freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
            angles = torch.outer(pos[:, axis], freqs)
            cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
            sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    dtype = rope.freqs_cos.dtype
    cos = torch.cat(cos_parts, dim=1).to(dtype)
    sin = torch.cat(sin_parts, dim=1).to(dtype)
    return cos.view(1, len(pos), 1, -1), sin.view(1, len(pos), 1, -1)
