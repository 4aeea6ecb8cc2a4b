"""Training's validation samples render through the one sampler: the uniform sample is what
`infer.generate` renders, and stage 2's CAT sample beside it is generate's CAT run."""

from __future__ import annotations

import numpy as np
import pytest

from cat.policy import CatPolicy
from core.media import to_uint8_frames
from core.schema import CatInferConfig, GenerateConfig, ValidationConfig
from infer.generate import render
from train.samples import SampleRenderer


@pytest.fixture()
def captured(monkeypatch) -> dict[str, np.ndarray]:
    """The uint8 frames of every sample written, by file stem."""
    frames_by_stem: dict[str, np.ndarray] = {}
    real_write = SampleRenderer._write

    def capture(self, frames, prompt, stem):
        frames_by_stem[stem.name] = frames
        return real_write(self, frames, prompt, stem)

    monkeypatch.setattr(SampleRenderer, "_write", capture)
    return frames_by_stem


def test_stage2_samples_are_generates_uniform_and_cat_runs(tiny, tiny_cfg, tmp_path, captured):
    vcfg = ValidationConfig(height=64, width=64, num_frames=9, steps=3, seed=4)
    renderer = SampleRenderer(tiny, vcfg, "cpu", CatPolicy(rho=0.5))
    files = renderer.render(tiny.transformer, tmp_path)
    assert [f.video.name for f in files] == ["sample_0_uniform.mp4", "sample_0_cat.mp4"]
    assert all(f.video.stat().st_size > 0 and len(f.frames) == 3 for f in files)
    uniform, cat = files
    assert uniform.tokens_per_step == [48] * 3 and max(cat.tokens_per_step) < 48

    common = dict(model=tiny_cfg, prompt=vcfg.prompts[0], height=64, width=64, num_frames=9, steps=3, seed=4)
    for name, cat_settings in (("sample_0_uniform", None), ("sample_0_cat", CatInferConfig(rho=0.5))):
        gen = render(GenerateConfig(cat=cat_settings, **common), tiny, renderer.images[0])
        assert np.array_equal(to_uint8_frames(gen.video[0]), captured[name]), name


def test_stage1_samples_stay_uniform(tiny, tmp_path, captured):
    vcfg = ValidationConfig(height=32, width=32, num_frames=5, steps=1)
    files = SampleRenderer(tiny, vcfg, "cpu").render(tiny.transformer, tmp_path)
    assert [f.video.name for f in files] == ["sample_0_uniform.mp4"] and files[0].tokens == "uniform"
