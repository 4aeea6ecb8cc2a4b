"""cat.allocation: partitions cover the grid once, hit the budget, coarsen the simplest first, round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cat import allocate, allocate_from_complexity
from cat.allocation import EXTENT, SPATIAL, SPATIOTEMPORAL, Allocation, temporal_pairs
from cat.complexity import Complexity
from cat.overlay import draw_allocation

grids = st.tuples(st.integers(1, 9), st.integers(1, 7), st.integers(1, 7))


def random_complexity(grid, seed, batch=1, ties=False):
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, *grid)
    if ties:  # few distinct values: exercises tie-breaking
        return Complexity(torch.randint(0, 3, shape, generator=gen).float(), torch.randint(0, 3, shape, generator=gen).float())
    return Complexity(torch.rand(shape, generator=gen) * 100, torch.rand(shape, generator=gen) * 50)


def min_tokens(grid):
    f_, h_, w_ = grid
    blocks = (h_ // 2) * (w_ // 2)
    leftover = h_ * w_ - 4 * blocks
    pairs = len(temporal_pairs(f_))
    return f_ * leftover + (f_ - 2 * pairs) * blocks + pairs * blocks


def check_partition(alloc: Allocation):
    """Every cell covered by exactly one token, and each token covers exactly its extent."""
    tab = alloc.tokens()
    cover = torch.zeros(alloc.grid, dtype=torch.int64)
    for i in range(len(tab)):
        f, h, w = int(tab.f[i]), int(tab.h[i]), int(tab.w[i])
        nf, nh, nw = EXTENT[int(tab.kind[i])]
        assert (int(tab.nf[i]), int(tab.nh[i]), int(tab.nw[i])) == (nf, nh, nw)
        cover[f : f + nf, h : h + nh, w : w + nw] += 1
    assert bool((cover == 1).all()), "a cell is covered zero or several times"
    assert len(tab) == alloc.num_tokens
    assert torch.equal(torch.unique(alloc.token_of_cell()), torch.arange(len(tab)))


@settings(max_examples=60, deadline=None)
@given(grid=grids, rho=st.floats(0.05, 1.0), seed=st.integers(0, 10_000), ties=st.booleans())
def test_rho_partition_covers_each_cell_once_and_hits_the_budget(grid, rho, seed, ties):
    alloc = allocate_from_complexity(random_complexity(grid, seed, ties=ties), rho=rho)
    check_partition(alloc)
    uniform = grid[0] * grid[1] * grid[2]
    target = round(rho * uniform)
    floor = min_tokens(grid)
    if target >= floor:
        assert abs(alloc.num_tokens - target) <= 1  # within one move (3 tokens); closest prefix -> <= 1.5
    else:
        assert alloc.num_tokens == floor  # as coarse as the grid allows
    assert alloc.num_tokens == sum(alloc.counts().values())


@settings(max_examples=40, deadline=None)
@given(grid=grids, s_thr=st.floats(0, 120), t_thr=st.floats(0, 60), seed=st.integers(0, 10_000))
def test_threshold_partition_is_valid_and_monotone(grid, s_thr, t_thr, seed):
    cx = random_complexity(grid, seed, batch=2)
    alloc = allocate_from_complexity(cx, thresholds=(s_thr, t_thr))
    check_partition(alloc)
    looser = allocate_from_complexity(cx, thresholds=(s_thr + 10, t_thr + 10))
    assert looser.num_tokens <= alloc.num_tokens  # higher thresholds never add tokens


def test_lowest_complexity_is_coarsened_first():
    grid = (5, 8, 8)
    cx = random_complexity(grid, 3)
    alloc = allocate_from_complexity(cx, rho=0.6)
    s_blk = cx.spatial[0].reshape(5, 4, 2, 4, 2).amax(dim=(2, 4))
    coarse = alloc.levels > 0
    assert coarse.any() and (~coarse).any()
    assert s_blk[coarse].max() <= s_blk[~coarse].min()


def test_temporal_merges_need_low_temporal_complexity():
    grid = (5, 4, 4)
    spatial = torch.zeros(1, *grid)
    temporal = torch.zeros(1, *grid)
    temporal[0, :, :2, :2] = 50.0  # the top-left block moves
    alloc = allocate_from_complexity(Complexity(spatial, temporal), thresholds=(1.0, 10.0))
    assert alloc.levels[0].eq(SPATIAL).all()  # frame 0 is never merged in time
    assert alloc.levels[1:, 0, 0].eq(SPATIAL).all()  # moving block: spatial only
    assert alloc.levels[1:, 1, 1].eq(SPATIOTEMPORAL).all()


def test_even_frame_count_leaves_the_last_frame_unpaired():
    grid = (4, 2, 2)
    alloc = allocate_from_complexity(Complexity(torch.zeros(1, *grid), torch.zeros(1, *grid)), rho=0.01)
    assert alloc.levels[:, 0, 0].tolist() == [SPATIAL, SPATIOTEMPORAL, SPATIOTEMPORAL, SPATIAL]


def test_json_round_trip_and_determinism():
    cx = random_complexity((9, 5, 7), 11, batch=2)
    a = allocate_from_complexity(cx, rho=0.4)
    b = allocate_from_complexity(cx, rho=0.4)
    assert a == b
    data = json.loads(json.dumps(a.to_dict()))
    back = Allocation.from_dict(data)
    assert back == a and back.info == a.info and data["tokens"] == a.num_tokens


def test_bad_inputs_are_rejected_with_reasons():
    cx = random_complexity((3, 4, 4), 0)
    with pytest.raises(ValueError, match="exactly one"):
        allocate_from_complexity(cx)
    with pytest.raises(ValueError, match="exactly one"):
        allocate_from_complexity(cx, rho=0.5, thresholds=(1, 1))
    with pytest.raises(ValueError, match="rho"):
        allocate_from_complexity(cx, rho=1.5)
    bad = torch.zeros(3, 2, 2, dtype=torch.int8)
    bad[1, 0, 0] = SPATIOTEMPORAL  # frame 2 does not match
    with pytest.raises(ValueError, match="must match"):
        Allocation((3, 4, 4), bad)
    bad = torch.zeros(3, 2, 2, dtype=torch.int8)
    bad[0] = SPATIOTEMPORAL
    with pytest.raises(ValueError):
        Allocation((3, 4, 4), bad)


def test_allocate_accepts_pixels_and_latents():
    gen = torch.Generator().manual_seed(0)
    video = torch.zeros(1, 3, 9, 64, 96)
    video[..., :32, :48] = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    a = allocate(video, (3, 4, 6), rho=0.5)
    assert a.grid == (3, 4, 6) and abs(a.num_tokens - 36) <= 1
    assert (a.levels[:, 0, 0] == 0).all()  # the textured corner stays fine
    latent = torch.randn(1, 16, 3, 8, 12, generator=gen)
    assert allocate(latent, (3, 4, 6), rho=0.5).grid == (3, 4, 6)


def test_overlay_png_tints_coarse_cells(tmp_path):
    video = torch.zeros(1, 3, 9, 64, 96)  # mid grey
    alloc = allocate_from_complexity(random_complexity((3, 4, 6), 5), rho=0.5)
    path = draw_allocation(video, alloc, tmp_path / "alloc.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape == (64 + 16, 3 * 96, 3)
    cells = alloc.cell_levels()
    for f in range(3):
        for h in range(4):
            for w in range(6):
                r, g, b = img[16 * h + 14, 96 * f + 16 * w + 8]  # below the panel caption
                level = int(cells[f, h, w])
                if level == 0:
                    assert abs(r - b) < 3  # untinted grey
                elif level == SPATIAL:
                    assert b > r + 50  # blue
                else:
                    assert r > b + 50  # orange


def test_infinite_scores_are_never_coarsened():
    """Unknown motion (temporal = inf, as from a single conditioning image) never merges in time."""
    grid = (5, 4, 4)
    cx = Complexity(torch.zeros(1, *grid), torch.full((1, *grid), float("inf")))
    alloc = allocate_from_complexity(cx, rho=0.05)
    assert (alloc.levels == SPATIAL).all()
    assert alloc.num_tokens == 5 * 4


# ---------------------------------------------------------------- reference detail
def with_ref(cx: Complexity, seed: int, ties: bool = False) -> Complexity:
    """`cx` plus a random spatial_ref map (few distinct values with `ties`)."""
    gen = torch.Generator().manual_seed(seed + 1)
    if ties:
        ref = torch.randint(0, 3, cx.spatial.shape, generator=gen).float()
    else:
        ref = torch.rand(cx.spatial.shape, generator=gen) * 100
    return Complexity(cx.spatial, cx.temporal, ref)


def check_detail(alloc: Allocation):
    assert not bool((alloc.detail & (alloc.levels == 0)).any())  # detail only on coarse blocks
    for a, b in temporal_pairs(alloc.grid[0]):
        st_a = alloc.levels[a] == SPATIOTEMPORAL
        assert torch.equal(alloc.detail[a][st_a], alloc.detail[b][st_a])  # a pair's token has one flag


@settings(max_examples=40, deadline=None)
@given(grid=grids, rho=st.floats(0.05, 1.0), seed=st.integers(0, 10_000), ties=st.booleans())
def test_reference_maps_keep_the_rho_budget_and_flag_only_coarse_tokens(grid, rho, seed, ties):
    cx = with_ref(random_complexity(grid, seed, ties=ties), seed, ties)
    alloc = allocate_from_complexity(cx, rho=rho)
    check_partition(alloc)
    check_detail(alloc)
    target = round(rho * grid[0] * grid[1] * grid[2])
    if target >= min_tokens(grid):
        assert abs(alloc.num_tokens - target) <= 3  # within one move
    thr = allocate_from_complexity(cx, thresholds=(40.0, 20.0))
    check_partition(thr)
    check_detail(thr)
    plain = allocate_from_complexity(Complexity(cx.spatial, cx.temporal), thresholds=(40.0, 20.0))
    assert thr.num_tokens <= plain.num_tokens  # the cheaper unpack never makes a block costlier


@settings(max_examples=30, deadline=None)
@given(grid=grids, rho=st.floats(0.05, 1.0), seed=st.integers(0, 10_000), ties=st.booleans())
def test_without_a_cheaper_reference_the_allocation_is_the_plain_one(grid, rho, seed, ties):
    """spatial_ref None, equal to the plain map (ties choose plain) or above it: same levels, no detail."""
    cx = random_complexity(grid, seed, ties=ties)
    plain = allocate_from_complexity(cx, rho=rho)
    plain_thr = allocate_from_complexity(cx, thresholds=(40.0, 20.0))
    assert not plain.uses_reference and not bool(plain.detail.any()) and "detail" not in plain.to_dict()
    for ref in (cx.spatial.clone(), cx.spatial + 1.0):
        same = Complexity(cx.spatial, cx.temporal, ref)
        for alloc, base in (
            (allocate_from_complexity(same, rho=rho), plain),
            (allocate_from_complexity(same, thresholds=(40.0, 20.0)), plain_thr),
        ):
            assert torch.equal(alloc.levels, base.levels) and not bool(alloc.detail.any())


def test_a_static_textured_clip_is_coarse_with_detail_at_the_default_thresholds():
    """A still textured wall (frame 0 held): plain pooling would lose the texture (kept fine); with the
    reference maps every token may go coarse and restores the image's detail."""
    from cat import region_complexity
    from core.schema import CatInferConfig

    thresholds = tuple(CatInferConfig().thresholds)
    texture = torch.rand(1, 3, 1, 64, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    still = texture.expand(-1, -1, 9, -1, -1)
    grid = (3, 4, 6)
    fine = allocate_from_complexity(region_complexity(still, grid), thresholds=thresholds)
    assert fine.is_uniform and not fine.uses_reference
    alloc = allocate_from_complexity(region_complexity(still, grid, reference=True), thresholds=thresholds)
    assert alloc.uses_reference and bool((alloc.levels > 0).all()) and torch.equal(alloc.detail, alloc.levels > 0)
    assert bool((alloc.levels[1:] == SPATIOTEMPORAL).all())  # static: frames 1-2 merge in time as well
    check_detail(alloc)
    assert alloc.cell_detail().shape == grid and bool(alloc.cell_detail().all())


def test_detail_round_trips_and_old_files_load_without_it():
    cx = with_ref(random_complexity((5, 4, 6), 2), 2)
    alloc = allocate_from_complexity(cx, rho=0.3)
    assert alloc.uses_reference
    data = json.loads(json.dumps(alloc.to_dict()))
    assert "detail" in data
    back = Allocation.from_dict(data)
    assert back == alloc and torch.equal(back.detail, alloc.detail)
    del data["detail"]  # a file written before reference detail existed
    old = Allocation.from_dict(data)
    assert torch.equal(old.levels, alloc.levels) and not old.uses_reference and old != alloc


def test_bad_detail_is_rejected_with_reasons():
    levels = torch.zeros(3, 2, 2, dtype=torch.int8)
    levels[0, 0, 0] = SPATIAL
    detail = torch.zeros(3, 2, 2, dtype=torch.bool)
    detail[0, 1, 1] = True  # a fine block
    with pytest.raises(ValueError, match="only for coarse blocks"):
        Allocation((3, 4, 4), levels, detail=detail)
    levels[1:, 0, 0] = SPATIOTEMPORAL
    detail = torch.zeros(3, 2, 2, dtype=torch.bool)
    detail[1, 0, 0] = True  # frame 2 of the pair not flagged
    with pytest.raises(ValueError, match="share their detail flag"):
        Allocation((3, 4, 4), levels, detail=detail)
    with pytest.raises(ValueError, match="detail shape"):
        Allocation((3, 4, 4), levels, detail=torch.zeros(3, 1, 2, dtype=torch.bool))
    data = Allocation((3, 4, 4), levels).to_dict()
    data["detail"] = [["00"]]
    with pytest.raises(ValueError, match="allocation detail holds"):
        Allocation.from_dict(data)
