"""cat.complexity: P.910 SI/TI against siti-tools, and per-cell maps that point at the right regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from siti_tools.siti import SiTiCalculator

from cat.complexity import clip_si_ti, latent_complexity, luma, region_complexity


def _reference_si_ti(y: np.ndarray) -> tuple[float, float]:
    si = max(SiTiCalculator.si(frame) for frame in y)
    ti = max((SiTiCalculator.ti(y[t], y[t - 1]) for t in range(1, len(y))), default=0.0)
    return si, ti


def test_luma_matches_bt601_on_0_255_scale():
    rgb = torch.tensor([0, 64, 255], dtype=torch.uint8).view(1, 3, 1, 1, 1)
    expected = 0.299 * 0 + 0.587 * 64 + 0.114 * 255
    assert luma(rgb).item() == pytest.approx(expected, abs=1e-4)
    as_float = rgb.float() / 127.5 - 1
    assert luma(as_float).item() == pytest.approx(expected, abs=1e-3)


@pytest.mark.parametrize("frames,chunk", [(9, 4), (5, 2), (1, 4)])
def test_clip_si_ti_matches_siti_tools(frames, chunk):
    gen = torch.Generator().manual_seed(frames)
    base = torch.rand(2, 3, 1, 40, 56, generator=gen)
    drift = torch.linspace(0, 1, frames).view(1, 1, frames, 1, 1)
    video = (base + 0.3 * drift * torch.rand(2, 3, frames, 40, 56, generator=gen)).clamp(0, 1) * 2 - 1
    si, ti = clip_si_ti(video, chunk=chunk)
    y = luma(video).double().numpy()
    for b in range(2):
        ref_si, ref_ti = _reference_si_ti(y[b])
        assert si[b].item() == pytest.approx(ref_si, rel=1e-5)
        assert ti[b].item() == pytest.approx(ref_ti, rel=1e-5, abs=1e-6)


def test_clip_si_ti_uint8_equals_float_input():
    gen = torch.Generator().manual_seed(1)
    u8 = torch.randint(0, 256, (1, 3, 5, 32, 48), dtype=torch.uint8, generator=gen)
    a = clip_si_ti(u8)
    b = clip_si_ti(u8.float() / 127.5 - 1)
    assert torch.allclose(a[0], b[0], rtol=1e-4) and torch.allclose(a[1], b[1], rtol=1e-4)


def _textured_moving_clip() -> torch.Tensor:
    """9 frames, 64x64 (grid (3, 4, 4)): flat left half; textured, static top-right quadrant;
    a bright square moving over the dark bottom-right quadrant."""
    gen = torch.Generator().manual_seed(0)
    video = torch.zeros(1, 3, 9, 64, 64)
    video[:, :, :, :32, 32:] = torch.rand(1, 3, 1, 32, 32, generator=gen) * 2 - 1
    video[:, :, :, 32:, 32:] = -1.0
    for t in range(9):
        video[:, :, t, 36 + t % 4 : 48 + t % 4, 36 + t : 48 + t] = 1.0
    return video


def test_region_complexity_points_at_texture_and_motion():
    c = region_complexity(_textured_moving_clip(), (3, 4, 4))
    assert c.spatial.shape == c.temporal.shape == (1, 3, 4, 4)
    assert c.spatial[0, :, :, :2].abs().max() == 0  # flat: pooling loses nothing
    assert (c.spatial[0, :, :2, 2:] > 10).all()  # static texture: the cell mean loses it
    assert (c.temporal[0, :, :2, 2:] == 0).all()  # ... but its cell means never change
    assert c.temporal[0, 0].abs().max() == 0  # the conditioning frame has no predecessor
    assert (c.temporal[0, 1:, 2:, 2:].amax(dim=(1, 2)) > 10).all()  # the moving square changes cell means
    assert c.temporal[0, :, :, :2].abs().max() == 0  # nothing moves on the left


def test_linear_gradient_is_kept_fine_at_the_default_thresholds():
    """A smooth ramp has no texture (per-cell Sobel std ~0, the old statistic coarsened it) but a
    16-px staircase is what pooling makes of it: its cells lose a * sqrt((16^2 - 1) / 12) of luma."""
    from cat.allocation import allocate_from_complexity
    from core.schema import CatInferConfig

    slope = 0.5  # luma per pixel, a 320-level ramp over 640 px
    ramp = (torch.arange(64, dtype=torch.float32) + 0.5) * slope + 100.0  # luma 0..255 along W
    video = (ramp / 127.5 - 1).view(1, 1, 1, 1, 64).expand(1, 3, 9, 32, 64).contiguous()  # grey: luma = value
    c = region_complexity(video, (3, 2, 4))
    assert torch.allclose(c.spatial, torch.full_like(c.spatial, slope * ((16**2 - 1) / 12) ** 0.5), rtol=1e-3)
    assert c.temporal.abs().max() < 1e-3  # static
    alloc = allocate_from_complexity(c, thresholds=tuple(CatInferConfig().thresholds))
    assert alloc.is_uniform  # every token fine
    flat = region_complexity(torch.zeros(1, 3, 9, 32, 64), (3, 2, 4))
    assert allocate_from_complexity(flat, thresholds=tuple(CatInferConfig().thresholds)).num_tokens < 24 // 3


def test_uniformly_changing_light_is_not_merged_in_time():
    """Light that brightens a whole region evenly: no texture and no texture in Y_n - Y_{n-1} (the
    old temporal statistic, the std of the difference, read 0 there and merged it in time, first
    in raster order), but the cell means change, which a spatio-temporal token averages away."""
    from cat.allocation import SPATIAL, SPATIOTEMPORAL, allocate_from_complexity

    video = torch.zeros(1, 3, 9, 32, 64)
    video[:, :, :, :, :32] = torch.linspace(-0.8, 0.8, 9).view(1, 1, 9, 1, 1)  # left half brightens
    c = region_complexity(video, (3, 2, 4))
    assert c.spatial.abs().max() < 1e-3  # nothing to lose spatially anywhere
    assert (c.temporal[0, 1:, :, :2] > 10).all() and c.temporal[0, :, :, 2:].abs().max() == 0
    alloc = allocate_from_complexity(c, thresholds=(0.7, 1.0))
    assert (alloc.levels[:, :, 0] == SPATIAL).all()  # changing left: spatial tokens only
    assert (alloc.levels[1:, :, 1] == SPATIOTEMPORAL).all()  # static right: merged in time
    # rho order: 24 uniform tokens, 6 once every block is spatial; 5 = one temporal merge: the static one
    levels = allocate_from_complexity(c, rho=5 / 24).levels
    assert (levels[1:, :, 1] == SPATIOTEMPORAL).all() and (levels[:, :, 0] == SPATIAL).all()


def test_region_complexity_downsample_keeps_the_ranking():
    video = _textured_moving_clip()
    full = region_complexity(video, (3, 4, 4), downsample=1)
    sampled = region_complexity(video, (3, 4, 4), downsample=2)
    assert torch.equal(full.spatial == 0, sampled.spatial == 0)
    assert torch.equal(full.temporal == 0, sampled.temporal == 0)


def test_region_complexity_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="does not match patch grid"):
        region_complexity(torch.zeros(1, 3, 9, 64, 64), (3, 4, 5))


def test_latent_complexity_static_latent_has_no_temporal_complexity():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 16, 1, 8, 8, generator=gen).repeat(1, 1, 3, 1, 1)
    z[:, :, :, :4, :4] = 0.5  # a flat quadrant
    c = latent_complexity(z)
    assert c.spatial.shape == (1, 3, 4, 4)
    assert c.temporal.abs().max() == 0
    assert c.spatial[0, :, 0, 0].max() == 0 and (c.spatial[0, :, 3, 3] > 0).all()


def test_region_complexity_matches_a_numpy_reference_per_cell():
    """Spatial: max over the latent frame's pixel frames of the std of luma per 16x16 cell (the RMS
    error of the cell's mean); temporal: range of the cell's mean luma over frames 4f-4..4f."""
    gen = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    c = region_complexity(video, (3, 2, 3), downsample=1)
    y = luma(video)[0].double().numpy()
    for f, frames in ((0, [0]), (1, [1, 2, 3, 4]), (2, [5, 6, 7, 8])):
        for h in range(2):
            for w in range(3):
                cell = (slice(16 * h, 16 * h + 16), slice(16 * w, 16 * w + 16))
                ref_s = max(y[n][cell].std() for n in frames)
                assert c.spatial[0, f, h, w].item() == pytest.approx(ref_s, rel=1e-4)
                means = [y[n][cell].mean() for n in range(frames[0] - 1, frames[-1] + 1)] if f else [0.0]
                assert c.temporal[0, f, h, w].item() == pytest.approx(max(means) - min(means), rel=1e-4, abs=1e-4)


def test_scale_reads_each_cell_over_its_full_resolution_footprint():
    gen = torch.Generator().manual_seed(4)
    big = torch.rand(1, 3, 5, 64, 96, generator=gen) * 2 - 1
    c = region_complexity(big, (2, 2, 3), downsample=1, scale=2)  # cells of 32x32 px
    y = luma(big)[0].double().numpy()
    assert c.spatial[0, 1, 1, 2].item() == pytest.approx(max(y[n][32:64, 64:96].std() for n in range(1, 5)), rel=1e-4)
    with pytest.raises(ValueError, match="at scale 3"):
        region_complexity(big, (2, 2, 3), scale=3)


def test_spatial_frames_last_reads_only_the_last_frame():
    video = torch.zeros(1, 3, 5, 32, 32)
    video[:, :, 1, :16, :16] = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    every = region_complexity(video, (2, 2, 2), spatial_frames="all")
    last = region_complexity(video, (2, 2, 2), spatial_frames="last")
    assert every.spatial[0, 1, 0, 0] > 10  # texture in frame 1 of latent frame 1's frames 1..4
    assert last.spatial[0, 1, 0, 0] == 0  # frame 4 is flat
    assert (every.spatial >= last.spatial).all()


def test_spatial_ref_matches_a_numpy_reference_per_cell():
    """spatial_ref: max over the latent frame's pixel frames of the std over each 16x16 cell of
    Y_t - Y_0 (what a coarse token that restores frame 0's detail loses); 0 on latent frame 0."""
    gen = torch.Generator().manual_seed(5)
    video = torch.rand(1, 3, 9, 32, 48, generator=gen) * 2 - 1
    c = region_complexity(video, (3, 2, 3), downsample=1, reference=True)
    plain = region_complexity(video, (3, 2, 3), downsample=1)
    assert torch.equal(c.spatial, plain.spatial) and torch.equal(c.temporal, plain.temporal)
    assert plain.spatial_ref is None
    y = luma(video)[0].double().numpy()
    for f, frames in ((0, [0]), (1, [1, 2, 3, 4]), (2, [5, 6, 7, 8])):
        for h in range(2):
            for w in range(3):
                cell = (slice(16 * h, 16 * h + 16), slice(16 * w, 16 * w + 16))
                expected = max((y[n] - y[0])[cell].std() for n in frames)
                assert c.spatial_ref[0, f, h, w].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert c.spatial_ref[0, 0].abs().max() == 0 and (c.spatial_ref[0, 1:] > 10).all()


def test_spatial_ref_is_zero_on_a_static_textured_clip_and_positive_where_something_moves():
    c = region_complexity(_textured_moving_clip(), (3, 4, 4), reference=True)
    assert c.spatial_ref.shape == c.spatial.shape
    assert c.spatial_ref[0, 0].abs().max() == 0  # frame 0 is the reference
    assert c.spatial_ref[0, :, :, :2].abs().max() == 0  # flat, static
    assert c.spatial_ref[0, :, :2, 2:].abs().max() == 0 and (c.spatial[0, :, :2, 2:] > 10).all()  # static texture
    assert (c.spatial_ref[0, 1:, 2:, 2:].amax(dim=(1, 2)) > 10).all()  # the moving square
    still = _textured_moving_clip()[:, :, :1].expand(-1, -1, 9, -1, -1)  # frame 0 held: static everywhere
    s = region_complexity(still, (3, 4, 4), reference=True)
    assert s.spatial_ref.abs().max() == 0 and s.spatial.amax() > 10


def test_latent_spatial_ref_is_zero_where_the_latent_equals_its_reference():
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(1, 16, 3, 8, 8, generator=gen)
    z[:, :, :, :, 4:] = z[:, :, :1, :, 4:]  # the right half static
    c = latent_complexity(z, reference=z[:, :, :1])
    assert c.spatial_ref[0, 0].abs().max() == 0  # frame 0 is the reference
    assert c.spatial_ref[0, 1:, :, 3:].abs().max() == 0  # static cells away from the moving half's Sobel reach
    assert (c.spatial_ref[0, 1:, :, :2] > 0.5).all()
    assert latent_complexity(z).spatial_ref is None
    with pytest.raises(ValueError, match="reference latent of shape"):
        latent_complexity(z, reference=z[:, :8, :1])
