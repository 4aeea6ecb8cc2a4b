"""The A/B reads its clips through data.video: with decord failing on the 96x96 grid clips (as
decord2 3.4.0 does on some CPUs; injected here), every one of the 9 redundancy levels still loads,
with PyAV's frames."""

from __future__ import annotations

import pytest
import torch
from data_helpers import break_decord, pyav_frames

from core.schema import ABConfig
from infer.clips import fit, list_clips, load_clip


@pytest.fixture(scope="module")
def grid96(tmp_path_factory):
    """The demo's A/B grid: 9 synthetic clips at 96x96, 9 frames."""
    work = tmp_path_factory.mktemp("ab-grid")
    cfg = ABConfig(height=96, width=96, num_frames=9, output_dir=str(work))
    clips, rejected = list_clips(cfg, work)
    return cfg, work, clips, rejected


@pytest.mark.parametrize("mode", ["open", "batch", "shape"])
def test_all_nine_levels_load_when_decord_fails(grid96, monkeypatch, mode):
    cfg, work, _, _ = grid96
    break_decord(monkeypatch, mode)
    clips, rejected = list_clips(cfg, work)
    assert rejected == [] and len({c.level for c in clips}) == 9
    for clip in clips:
        video = load_clip(clip, cfg.num_frames, cfg.height, cfg.width)
        assert video.shape == (1, 3, 9, 96, 96)
        expected = fit(pyav_frames(clip.path, range(9)), 96, 96)
        assert torch.equal(video, expected)
