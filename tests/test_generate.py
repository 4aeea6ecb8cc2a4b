"""Generation writes a playable mp4 with the requested frames and size, plus a contact sheet."""

from __future__ import annotations

import json

import imageio.v3 as iio

from core.schema import GenerateConfig
from infer.generate import generate


def test_generate_writes_video_of_expected_shape(tiny_cfg, tmp_path):
    cfg = GenerateConfig(model=tiny_cfg, height=48, width=80, num_frames=13, steps=2, output_dir=str(tmp_path))
    info = generate(cfg)
    frames = iio.imread(tmp_path / "video.mp4", plugin="pyav")
    assert frames.shape == (13, 48, 80, 3)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 0
    assert json.loads((tmp_path / "generate.json").read_text())["frames"] == 13 == info["frames"]
