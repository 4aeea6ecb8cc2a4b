"""Calibrated video metrics on real texture (scikit-image photographs): identical, blurred, noisy."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from data.synth.photo import clip_tensor, photo_clip
from infer.metrics import ClipScorer, StLpipsMetric, VmafMetric, frame_subsample, metric_specs, psnr, ssim

H, W, T = 64, 96, 5  # small: VMAF and ST-LPIPS are slow on CPU


@pytest.fixture(scope="module")
def metrics():
    torch.set_num_threads(1)
    return VmafMetric(), StLpipsMetric()


@pytest.fixture(scope="module")
def clips():
    ref = clip_tensor(photo_clip("astronaut", H, W, T, "pan"))
    frames = ref.permute(1, 0, 2, 3).reshape(-1, 1, H, W)
    blur = F.conv2d(F.pad(frames, (4, 4, 4, 4), mode="replicate"), torch.ones(1, 1, 9, 9) / 81)
    blur = blur.reshape(T, 3, H, W).permute(1, 0, 2, 3)
    noise = (ref + 0.25 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    return ref, blur, noise


def test_vmaf_identical_real_texture_is_high_and_degradations_far_lower(metrics, clips):
    vmaf, _ = metrics
    ref, blur, noise = clips
    same = vmaf.score(ref, ref)
    assert same >= 95.0  # measured 99.49 on this clip (64x96, 5 frames)
    assert vmaf.score(ref, blur) < same - 50  # measured 6.4
    assert vmaf.score(ref, noise) < same - 10  # measured ~72 (noise std 32 luma levels)


def test_st_lpips_identical_is_zero_and_degradations_higher(metrics, clips):
    _, stl = metrics
    ref, blur, noise = clips
    assert stl.score(ref, ref) == pytest.approx(0.0, abs=1e-6)
    assert stl.score(ref, blur) > 0.2 and stl.score(ref, noise) > 0.2


def test_st_lpips_cached_features_equal_the_package_forward(metrics, clips):
    _, stl = metrics
    ref, _, noise = clips
    a, b = ref[:, :2].permute(1, 0, 2, 3), noise[:, :2].permute(1, 0, 2, 3)
    with torch.no_grad():
        expected = stl.net(a, b).flatten()
    assert torch.allclose(stl.from_features(stl.features(a), stl.features(b)), expected, atol=1e-6)


def test_st_lpips_loads_without_ipython_and_leaves_no_stub(monkeypatch):
    """The package imports IPython at module level; without IPython a stub serves that import only."""
    import importlib.util

    for name in [m for m in sys.modules if m.startswith("stlpips_pytorch") or m == "IPython"]:
        monkeypatch.delitem(sys.modules, name)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "IPython" else real(n, *a))
    metric = StLpipsMetric()
    assert "IPython" not in sys.modules
    x = torch.zeros(1, 3, 32, 32)
    assert float(metric.from_features(metric.features(x), metric.features(x))[0]) == 0.0


def test_a_partial_st_lpips_weight_file_is_refused(monkeypatch, tmp_path):
    """A weight file missing the backbone must fail loudly, not pass as 'calibrated'."""
    import infer.metrics as m

    state = torch.load(m.st_lpips_weights(), map_location="cpu", weights_only=True)
    partial = {k: v for k, v in state.items() if k.startswith("lin")}
    path = tmp_path / "alex_shift_tolerant.pth"
    torch.save(partial, path)
    monkeypatch.setattr(m, "st_lpips_weights", lambda: path)
    with pytest.raises(RuntimeError, match="do not match"):
        m.StLpipsMetric()


def test_clip_scorer_matches_the_direct_metrics(metrics, clips):
    vmaf, stl = metrics
    ref, blur, _ = clips
    scores = ClipScorer(ref, vmaf, stl, st_lpips_frames=2).score(blur)
    frames = frame_subsample(T, 2)
    assert frames == [0, T - 1]
    assert scores["vmaf"] == pytest.approx(vmaf.score(ref, blur), abs=1e-4)
    assert scores["st_lpips"] == pytest.approx(stl.score(ref, blur, frames), abs=1e-5)
    assert scores["psnr"] == pytest.approx(psnr(blur, ref)) and scores["ssim"] == pytest.approx(ssim(blur, ref))
    assert ClipScorer(ref, None, None).score(ref)["psnr"] == 100.0
    assert ClipScorer(ref, None, None, with_ssim=False).score(ref)["ssim"] is None  # off, not made up


def test_vmaf_refuses_frames_too_small_and_scorer_says_none(metrics):
    vmaf, _ = metrics
    tiny = torch.zeros(3, 2, 16, 16)
    with pytest.raises(ValueError, match="at least 32x32"):
        vmaf.score(tiny, tiny)
    assert ClipScorer(tiny, vmaf, None).score(tiny)["vmaf"] is None


def test_every_metric_carries_a_calibrated_flag_and_label():
    specs = metric_specs()
    assert {"vmaf", "st_lpips", "psnr", "ssim"} <= set(specs)
    assert all(s["calibrated"] is True for s in specs.values())
    assert specs["st_lpips"]["label"] == "ST-LPIPS (alex, shift-tolerant, calibrated)"


def test_photo_clips_pan_moves_and_static_holds():
    pan = photo_clip("coffee", 32, 48, 3, "pan")
    still = photo_clip("coffee", 32, 48, 3, "static")
    assert pan.shape == (3, 32, 48, 3) and pan.dtype.name == "uint8"
    assert (pan[0] != pan[2]).any() and (still[0] == still[2]).all()
    with pytest.raises(ValueError, match="not one of"):
        photo_clip("moon", 32, 48, 3)
