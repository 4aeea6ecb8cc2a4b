"""cat.tokenizer + core.models.wan21.rope: pack/unpack identity on region-constant latents, RoPE at token centres."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from hypothesis import given, settings
from hypothesis import strategies as st

from cat.allocation import FINE, Allocation, allocate_from_complexity
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


def random_detail_allocation(grid, rho, seed):
    """`random_allocation` whose maps also carry a random spatial_ref (some tokens flag detail)."""
    gen = torch.Generator().manual_seed(seed)
    cx = Complexity(*(torch.rand(1, *grid, generator=gen) for _ in range(3)))
    return allocate_from_complexity(cx, rho=rho)


@settings(max_examples=30, deadline=None)
@given(
    grid=grids, rho=st.floats(0.1, 1.0), seed=st.integers(0, 10_000), upsample=st.sampled_from(["nearest", "bilinear"])
)
def test_reference_detail_restores_a_static_latent_exactly_and_only_on_detail_cells(grid, rho, seed, upsample):
    """U(P(x)) + R(ref) = x on every detail cell of a latent equal to its reference on every frame
    (whatever its texture); R(ref) is 0 off the detail cells."""
    from cat.oracle import pooled_content
    from cat.tokenizer import reference_detail

    alloc = random_detail_allocation(grid, rho, seed)
    layout = build_layout(alloc)
    f_, h_, w_ = grid
    ref = torch.randn(2, 4, 1, 2 * h_, 2 * w_, generator=torch.Generator().manual_seed(seed))
    static = ref.expand(-1, -1, f_, -1, -1)
    detail = reference_detail(ref, static.shape, layout, upsample)
    cells = layout.detail_cells.view(f_, h_, 1, w_, 1).expand(f_, h_, 2, w_, 2).reshape(f_, 2 * h_, 2 * w_)
    plain = pooled_content(static, build_layout(Allocation(alloc.grid, alloc.levels)), upsample)
    restored = pooled_content(static, layout, upsample, reference=ref)
    assert torch.equal(detail[:, :, ~cells], torch.zeros_like(detail[:, :, ~cells]))
    assert torch.equal(restored[:, :, ~cells], plain[:, :, ~cells])
    assert torch.allclose(restored[:, :, cells], static[:, :, cells], atol=1e-5)


def test_correction_without_a_reference_for_detail_tokens_fails_in_one_line():
    from cat.tokenizer import coarse_correction, reference_detail

    alloc = random_detail_allocation((3, 4, 4), 0.3, 1)
    assert alloc.uses_reference
    layout = build_layout(alloc)
    x = torch.randn(1, 4, 3, 8, 8)
    with pytest.raises(ValueError, match="no reference latent was given") as info:
        coarse_correction(x, gather_patches(x, layout), 0.5, layout)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="reference latent of shape"):
        reference_detail(torch.randn(1, 4, 2, 8, 8), x.shape, layout)
    plain = build_layout(Allocation(alloc.grid, alloc.levels))
    assert not bool(plain.detail_cells.any())
    coarse_correction(x, gather_patches(x, plain), 0.5, plain)  # no detail: no reference needed
