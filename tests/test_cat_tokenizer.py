"""cat.tokenizer + core.models.wan21.rope: pack/unpack identity on region-constant latents, RoPE at token centres."""

from __future__ import annotations

import math

import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from hypothesis import given, settings
from hypothesis import strategies as st

from cat.allocation import FINE, allocate_from_complexity
from cat.complexity import Complexity
from cat.tokenizer import build_layout, gather_patches, scatter_patches
from core.models.wan21.rope import rope_at

grids = st.tuples(st.integers(1, 7), st.integers(1, 6), st.integers(1, 6))


def random_allocation(grid, rho, seed):
    gen = torch.Generator().manual_seed(seed)
    cx = Complexity(torch.rand(1, *grid, generator=gen), torch.rand(1, *grid, generator=gen))
    return allocate_from_complexity(cx, rho=rho)


def region_constant_latent(alloc, channels, seed):
    """A latent whose value is constant over each coarse token's cells at each pooled position:
    a coarse token's (dh, dw) sub-cell is one constant over its 2x2 latent pixels and, for a
    spatio-temporal token, over both frames."""
    gen = torch.Generator().manual_seed(seed)
    f_, h_, w_ = alloc.grid
    x = torch.randn(2, channels, f_, 2 * h_, 2 * w_, generator=gen)
    tab = alloc.tokens()
    for i in range(len(tab)):
        if int(tab.kind[i]) == FINE:
            continue
        f, h, w, nf = int(tab.f[i]), int(tab.h[i]), int(tab.w[i]), int(tab.nf[i])
        for dh in range(2):
            for dw in range(2):
                value = torch.randn(2, channels, 1, 1, 1, generator=gen)
                r, c = 2 * (h + dh), 2 * (w + dw)
                x[:, :, f : f + nf, r : r + 2, c : c + 2] = value
    return x


@settings(max_examples=40, deadline=None)
@given(grid=grids, rho=st.floats(0.1, 1.0), seed=st.integers(0, 10_000))
def test_pack_then_unpack_is_identity_on_region_constant_latents(grid, rho, seed):
    alloc = random_allocation(grid, rho, seed)
    layout = build_layout(alloc)
    x = region_constant_latent(alloc, 5, seed)
    patches = gather_patches(x, layout)
    assert patches.shape == (2, alloc.num_tokens, 5, 2, 2)
    back = scatter_patches(patches, layout, upsample="nearest")
    torch.testing.assert_close(back, x, rtol=0, atol=1e-6)


def test_all_fine_pack_is_the_stock_patchify():
    grid = (3, 4, 5)
    layout = build_layout(None, grid)
    x = torch.randn(1, 7, 3, 8, 10)
    stock = x.view(1, 7, 3, 4, 2, 5, 2).permute(0, 2, 3, 5, 1, 4, 6).reshape(1, 60, 7, 2, 2)
    assert torch.equal(gather_patches(x, layout), stock)
    assert torch.equal(scatter_patches(stock, layout), x)


def test_bilinear_upsampling_keeps_fine_cells_and_region_means_close():
    alloc = random_allocation((5, 6, 6), 0.5, 1)
    layout = build_layout(alloc)
    x = torch.randn(1, 4, 5, 12, 12)
    patches = gather_patches(x, layout)
    near = scatter_patches(patches, layout, "nearest")
    smooth = scatter_patches(patches, layout, "bilinear")
    fine = ~layout.coarse_cells.view(5, 6, 1, 6, 1).expand(5, 6, 2, 6, 2).reshape(5, 12, 12)
    assert torch.equal(smooth[..., fine], near[..., fine])
    assert not torch.equal(smooth, near)


@settings(max_examples=30, deadline=None)
@given(grid=grids, rho=st.floats(0.1, 1.0), seed=st.integers(0, 10_000))
def test_coarse_token_rope_positions_are_region_centres(grid, rho, seed):
    alloc = random_allocation(grid, rho, seed)
    layout = build_layout(alloc)
    token = alloc.token_of_cell()
    coords = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij"), dim=-1).double()
    for i in range(layout.num_tokens):
        covered = coords[token == i]
        torch.testing.assert_close(layout.centres[i], covered.mean(dim=0))


def test_rope_matches_stock_at_integer_positions_and_the_formula_at_fractional_ones():
    rope = WanRotaryPosEmbed(attention_head_dim=24, patch_size=(1, 2, 2), max_seq_len=32)
    x = torch.zeros(1, 16, 3, 8, 10)
    stock_cos, stock_sin = rope(x)
    grid = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(4), torch.arange(5), indexing="ij"), -1)
    cos, sin = rope_at(rope, grid.reshape(-1, 3))
    assert torch.equal(cos, stock_cos) and torch.equal(sin, stock_sin)
    # fractional: (1.5, 2.5, 0.5); head_dim 24 -> t/h/w dims 8/8/8, angle = pos * 10000^(-2i/d)
    cos, sin = rope_at(rope, torch.tensor([[1.5, 2.5, 0.5]]))
    expected = []
    for pos, dim in ((1.5, 8), (2.5, 8), (0.5, 8)):
        for i in range(dim // 2):
            expected += [math.cos(pos * 10000 ** (-2 * i / dim))] * 2
    torch.testing.assert_close(cos.flatten().double(), torch.tensor(expected, dtype=torch.float64), atol=1e-7, rtol=0)
    assert cos.shape == (1, 1, 1, 24) and sin.dtype == torch.float32
