"""The quality bound: the pixel map, the blind control, full-resolution complexity, the CLI's rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation
from cat.complexity import region_complexity
from core.config import ConfigError, load_config
from core.schema import BoundConfig
from infer.bound_map import blind_allocation, bound_clip, full_resolution_complexity, integer_factor, make_allocation


def _alloc(levels: list) -> Allocation:
    lv = torch.tensor(levels, dtype=torch.int8)
    return Allocation((lv.shape[0], 2 * lv.shape[1], 2 * lv.shape[2]), lv)


def test_pixel_map_on_a_constructed_clip():
    """Grid (3, 2, 2) = 9 pixel frames of 32x32: frame 0 spatial, frames (1, 2) spatio-temporal."""
    video = torch.randn(3, 9, 32, 32, generator=torch.Generator().manual_seed(0))
    out = bound_clip(video, _alloc([[[SPATIAL]], [[SPATIOTEMPORAL]], [[SPATIOTEMPORAL]]]))
    for r in (0, 16):
        for c in (0, 16):
            cell = (slice(None), slice(r, r + 16), slice(c, c + 16))
            # pixel frame 0: its own 16x16 mean per channel
            want0 = video[:, 0][cell].mean(dim=(1, 2), keepdim=True).expand(3, 16, 16)
            assert torch.allclose(out[:, 0][cell], want0, atol=1e-6)
            # pixel frames 1..8: one mean over the 16x16 pixels and all 8 frames
            want = video[:, 1:9, r : r + 16, c : c + 16].mean(dim=(1, 2, 3))
            assert torch.allclose(
                out[:, 1:9, r : r + 16, c : c + 16], want.view(3, 1, 1, 1).expand(3, 8, 16, 16), atol=1e-6
            )


def test_pixel_map_spatial_token_keeps_each_frame_and_fine_cells_unchanged():
    video = torch.randn(3, 9, 32, 32, generator=torch.Generator().manual_seed(1))
    out = bound_clip(video, _alloc([[[0]], [[SPATIAL]], [[0]]]))
    assert torch.equal(out[:, 0], video[:, 0]) and torch.equal(out[:, 5:], video[:, 5:])  # fine latent frames 0, 2
    per_frame = video[:, 1:5, :16, :16].mean(dim=(2, 3))  # (3, 4): one mean per pixel frame of latent frame 1
    assert torch.allclose(out[:, 1:5, :16, :16], per_frame[..., None, None].expand(3, 4, 16, 16), atol=1e-6)
    assert torch.equal(bound_clip(video, Allocation.uniform((3, 2, 2))), video)  # fine-only: the clip itself


def _numpy_bound(video: np.ndarray, levels: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """Reference map, written independently: video (3, T, H, W) float64, levels/detail per block
    (F', H'/2, W'/2) on a 16-px cell grid, Wan's latent -> pixel frames (0 -> [0], j -> 4j-3..4j)."""
    out = video.copy()
    f_, bh, bw = levels.shape
    frames_of = [[0]] + [list(range(4 * j - 3, 4 * j + 1)) for j in range(1, f_)]
    for f in range(f_):
        for i in range(bh):
            for k in range(bw):
                if levels[f, i, k] == 0:
                    continue
                pair = [f, f + 1] if levels[f, i, k] == SPATIOTEMPORAL and f % 2 == 1 else [f - 1, f]
                for ci in range(2):
                    for ck in range(2):
                        rs, cs = (
                            slice(32 * i + 16 * ci, 32 * i + 16 * ci + 16),
                            slice(32 * k + 16 * ck, 32 * k + 16 * ck + 16),
                        )
                        ref = video[:, 0, rs, cs]
                        ref_detail = ref - ref.mean(axis=(1, 2), keepdims=True) if detail[f, i, k] else 0.0
                        for t in frames_of[f]:
                            if levels[f, i, k] == SPATIAL:
                                pooled = video[:, t, rs, cs].mean(axis=(1, 2), keepdims=True)
                            else:
                                ts = frames_of[pair[0]] + frames_of[pair[1]]
                                pooled = video[:, ts, rs, cs].mean(axis=(1, 2, 3))[:, None, None]
                            out[:, t, rs, cs] = pooled + ref_detail
    return out


def _detail_alloc(levels: list, detail: list) -> Allocation:
    lv = torch.tensor(levels, dtype=torch.int8)
    return Allocation((lv.shape[0], 2 * lv.shape[1], 2 * lv.shape[2]), lv, detail=torch.tensor(detail))


# frame 0: spatial + fine; frames 1, 2: a spatio-temporal pair + spatial blocks
LEVELS = [[[SPATIAL, 0]], [[SPATIOTEMPORAL, SPATIAL]], [[SPATIOTEMPORAL, SPATIAL]]]
ALL_DETAIL = [[[True, False]], [[True, True]], [[True, True]]]


def test_reference_detail_bound_is_exact_on_a_static_textured_clip():
    """Static texture: pooled content + the reference's sub-cell detail is the clip itself; plain
    pooling loses the texture (the reason the static levels could not coarsen before)."""
    gen = torch.Generator().manual_seed(2)
    texture = torch.randint(0, 256, (3, 1, 32, 64), generator=gen, dtype=torch.uint8)
    video = texture.expand(3, 9, 32, 64).contiguous()
    with_detail = bound_clip(video, _detail_alloc(LEVELS, ALL_DETAIL))
    plain = bound_clip(video, _alloc(LEVELS))
    assert with_detail.dtype == torch.uint8 and torch.equal(with_detail, video)
    assert (plain.float() - video.float()).abs().mean() > 30  # uniform noise texture: ~64 per pixel
    # through the allocator: reference maps flag detail on the static texture, and the bound is exact
    maps = region_complexity(video.unsqueeze(0), (3, 2, 4), reference=True)
    alloc = make_allocation(maps, {"rho": 0.5})
    assert alloc.uses_reference and alloc.num_tokens < alloc.uniform_tokens
    assert torch.equal(bound_clip(video, alloc), video)
    blind = blind_allocation(alloc)  # content-blind: same counts, plain pooling
    assert not blind.uses_reference and blind.counts() == alloc.counts()


def test_reference_detail_bound_on_a_moving_clip_matches_the_formula():
    gen = torch.Generator().manual_seed(3)
    video = torch.rand(3, 9, 32, 64, generator=gen) * 2 - 1
    video[:, 1:] += 0.3 * torch.linspace(0, 1, 8).view(1, 8, 1, 1) * torch.rand(3, 1, 32, 64, generator=gen)
    for detail in (ALL_DETAIL, [[[False, False]], [[True, False]], [[True, False]]]):
        out = bound_clip(video, _detail_alloc(LEVELS, detail))
        want = _numpy_bound(video.double().numpy(), np.array(LEVELS), np.array(detail))
        assert np.allclose(out.numpy(), want, atol=1e-5)
    assert not torch.equal(bound_clip(video, _detail_alloc(LEVELS, ALL_DETAIL)), bound_clip(video, _alloc(LEVELS)))
    plain = bound_clip(video, _alloc(LEVELS))  # the reference formula with no detail is the plain map
    assert np.allclose(
        plain.numpy(), _numpy_bound(video.double().numpy(), np.array(LEVELS), np.zeros((3, 1, 2), bool)), atol=1e-5
    )


def test_pixel_map_refuses_a_clip_off_the_grid():
    with pytest.raises(ValueError, match="does not match patch grid"):
        bound_clip(torch.zeros(3, 8, 32, 32), Allocation.uniform((3, 2, 2)))


def test_blind_allocation_has_the_same_token_counts_and_ignores_content():
    grid = (5, 4, 6)
    gen = torch.Generator().manual_seed(0)
    clips = [torch.rand(1, 3, 17, 64, 96, generator=gen) * 2 - 1 for _ in range(2)]
    clips[1][:, :, :, :32] = 0.0  # flat top half: a different CAT allocation with similar counts
    for rho in (0.75, 0.5, 0.25):
        allocs = [make_allocation(region_complexity(c, grid), {"rho": rho}) for c in clips]
        for alloc in allocs:
            blind = blind_allocation(alloc)
            assert blind.counts() == alloc.counts() and blind.num_tokens == alloc.num_tokens
        if allocs[0].counts() == allocs[1].counts():
            assert blind_allocation(allocs[0]) == blind_allocation(allocs[1])
    flat = torch.zeros(1, 3, 17, 64, 96)
    flat[:, :, :, :, :48] = clips[0][:, :, :, :, :48]  # right half flat and static: CAT coarsens it, blind does not
    alloc = make_allocation(region_complexity(flat, grid), {"rho": 0.5})
    assert not torch.equal(alloc.levels, blind_allocation(alloc).levels)


def test_full_resolution_complexity_reads_each_cell_over_its_footprint():
    assert integer_factor((2160, 3840), (352, 640)) == 6 and integer_factor((2160, 3840), (720, 1280)) == 3
    assert integer_factor((200, 300), (64, 96)) is None
    frames = np.random.default_rng(0).integers(0, 255, (9, 64, 128, 3), dtype=np.uint8)
    frames[:, :, :64] = 128  # left half flat
    frames[:, :, 64:96] = np.linspace(0, 255, 32, dtype=np.float32).astype(np.uint8)[None, None, :, None]  # a ramp
    maps = full_resolution_complexity(frames, (32, 64), (3, 2, 4))
    video = torch.from_numpy(frames).permute(3, 0, 1, 2).unsqueeze(0)
    assert torch.equal(maps.spatial, region_complexity(video, (3, 2, 4), scale=2).spatial)
    assert maps.spatial[0, :, :, :2].max() == 0  # flat: nothing to lose
    assert maps.spatial[0, :, :, 2].min() > 50  # the ramp: a 32-px cell's mean loses it (no texture needed)
    assert full_resolution_complexity(frames[:, :60], (32, 64), (3, 2, 4)) is None


def _pooled_error(video: torch.Tensor, alloc: Allocation) -> float:
    return float((bound_clip(video, alloc) - video).abs().mean())


def test_cat_loses_less_than_blind_at_equal_tokens_on_a_half_smooth_clip():
    """Left half a smooth static ramp (no texture: per-cell SI ~0, so the old statistic coarsened it
    first and lost to the blind pattern at rho 0.5 and 0.25), right half flat grey with faint grain.
    Pooling the ramp makes a staircase; pooling the grain loses ~1.5 luma: CAT must pick the grain."""
    gen = torch.Generator().manual_seed(0)
    video = torch.zeros(3, 17, 64, 128)
    video[:, :, :, :64] = torch.linspace(-0.8, 0.8, 64).view(1, 1, 64, 1)
    video[:, :, :, 64:] = 0.02 * (torch.rand(3, 1, 64, 64, generator=gen) * 2 - 1)
    maps = region_complexity(video.unsqueeze(0), (5, 4, 8))
    for rho in (0.75, 0.5, 0.25):
        alloc = make_allocation(maps, {"rho": rho})
        blind = blind_allocation(alloc)
        assert alloc.num_tokens == blind.num_tokens < alloc.uniform_tokens
        assert _pooled_error(video, alloc) < 0.9 * _pooled_error(video, blind), rho


def test_bound_config_errors_are_clear():
    with pytest.raises(ConfigError, match="rhos"):
        load_config(BoundConfig, None, ["rhos=[1.5]"])
    with pytest.raises(ConfigError, match="complexity"):
        load_config(BoundConfig, None, ["complexity=latent"])


@pytest.fixture(scope="module")
def bound_run(tmp_path_factory):
    from data.synth.photo import make_photo_clips
    from infer.bound import run_bound

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("bound")
    make_photo_clips(root / "clips", 32, 64, 9, specs=[("chelsea", "static"), ("rocket", "pan")])
    cfg = load_config(
        BoundConfig,
        "configs/bound.yaml",
        [
            f"clips_dir={root / 'clips'}",
            f"output_dir={root / 'out'}",
            "height=32",
            "width=64",
            "num_frames=9",
            "rhos=[1.0,0.5]",
            "st_lpips_frames=1",
        ],
    )
    return run_bound(cfg, progress=False), root / "out"


KEYS = {
    "clip",
    "level",
    "detail_tokens",
    "budget",
    "tokens",
    "uniform_tokens",
    "ideal_speedup",
    "vmaf_cat",
    "vmaf_blind",
    "st_lpips_cat",
    "st_lpips_blind",
    "psnr_cat",
    "psnr_blind",
}


def test_bound_rows_and_files(bound_run):
    result, out = bound_run
    rows = result["rows"]
    assert len(rows) == 2 * 3  # 2 clips x (rho 1, rho 0.5, thresholds)
    assert all(KEYS <= set(r) for r in rows)
    assert json.loads((out / "bound.json").read_text())["rows"] == rows
    assert (out / "plots" / "bound.png").stat().st_size > 0
    md = (out / "report.md").read_text()
    assert "ST-LPIPS (alex, shift-tolerant, calibrated)" in md and "VMAF" in md
    assert all(r["blind_tokens"] == r["tokens"] for r in rows)


def test_fine_only_allocation_scores_the_identical_clip(bound_run):
    result, _ = bound_run
    for r in (r for r in result["rows"] if r["rho"] == 1.0):
        assert r["tokens"] == r["uniform_tokens"] and r["ideal_speedup"] == pytest.approx(1.0)
        assert r["psnr_cat"] == 100.0 and r["st_lpips_cat"] == pytest.approx(0.0, abs=1e-6)
        assert r["vmaf_cat"] >= 95.0
    half = [r for r in result["rows"] if r["rho"] == 0.5]
    assert all(r["tokens"] < r["uniform_tokens"] and r["ideal_speedup"] > 1.5 for r in half)
    static = next(r for r in half if "static" in r["clip"])
    moving = next(r for r in half if "pan" in r["clip"])
    # static photo: half the tokens at no loss, because coarse tokens restore the first frame's detail;
    # the blind control (plain pooling) loses it
    assert static["detail_tokens"] > 0 and static["psnr_cat"] == 100.0 and static["psnr_blind"] < 40.0
    assert moving["psnr_cat"] < 100.0  # a pan: pooled content differs from the clip
    assert all(0 <= r["detail_tokens"] <= r["tokens_spatial"] + r["tokens_spatiotemporal"] for r in result["rows"])


def test_no_rows_exits_non_zero_with_one_line(tmp_path, capsys):
    from infer.bound import main

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "broken.mp4").write_bytes(b"not a video")
    code = main(
        [
            "--config",
            "configs/bound.yaml",
            f"clips_dir={tmp_path / 'clips'}",
            f"output_dir={tmp_path / 'o'}",
            "height=32",
            "width=64",
            "num_frames=9",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len([line for line in err if line.startswith("error:")]) == 1
    assert "no rows" in err[-1] or any("no rows" in line for line in err)
    assert not (tmp_path / "o" / "bound.json").exists()
