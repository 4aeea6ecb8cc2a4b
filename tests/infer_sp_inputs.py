"""Shared inputs of the sequence-parallel test and its torchrun worker (tiny model, odd token counts)."""

from __future__ import annotations

from typing import Any

import torch

from core.models.wan21 import TINY_TRANSFORMER


def sp_inputs() -> tuple[Any, dict[str, torch.Tensor]]:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**TINY_TRANSFORMER).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    inputs = dict(
        hidden_states=torch.randn(1, 36, 3, 8, 10, generator=g),  # grid 3 x 4 x 5 = 60 tokens
        timestep=torch.tensor([700]),
        encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
        encoder_hidden_states_image=torch.randn(1, 65, 4, generator=g),
    )
    return transformer, inputs


def mixed_allocation() -> Any:
    """A CAT allocation on the 3 x 4 x 5 grid with fine, coarse-spatial and spatio-temporal tokens (31, odd)."""
    from cat import Allocation

    levels = torch.tensor([[[1, 1], [0, 1]], [[2, 1], [0, 2]], [[2, 0], [1, 2]]], dtype=torch.int8)
    return Allocation((3, 4, 5), levels)


def forward(transformer: Any, inputs: dict[str, torch.Tensor], mode: str = "uniform") -> torch.Tensor:
    """Uniform: the stock forward. cat: `cat.cat_forward` on the mixed sequence."""
    if mode == "uniform":
        return transformer(**inputs, return_dict=False)[0]
    from cat import cat_forward
    from infer.parallel import gathered_edge_params

    with gathered_edge_params(transformer):  # ZeRO-3: the model's own scale_shift_table is read directly
        return cat_forward(transformer, **inputs, allocation=mixed_allocation())
