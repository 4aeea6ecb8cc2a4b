"""3D RoPE at fractional positions, built with Wan's own frequency split.

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


def rope_at(
    rope: torch.nn.Module, positions: torch.Tensor, theta: float = ROPE_THETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (1, N, 1, head_dim) for (N, 3) (frame, row, col) positions in patch units
    (fractional allowed), in the layout and dtype `WanRotaryPosEmbed.forward` returns."""
    pos = positions.to(device=rope.freqs_cos.device, dtype=torch.float64)
    cos_parts, sin_parts = [], []
    for axis, dim in enumerate(axis_dims(rope)):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim))
        angles = torch.outer(pos[:, axis], freqs)
        cos_parts.append(angles.cos().repeat_interleave(2, dim=1).float())
        sin_parts.append(angles.sin().repeat_interleave(2, dim=1).float())
    dtype = rope.freqs_cos.dtype
    cos = torch.cat(cos_parts, dim=1).to(dtype)
    sin = torch.cat(sin_parts, dim=1).to(dtype)
    return cos.view(1, len(pos), 1, -1), sin.view(1, len(pos), 1, -1)
