"""The pieces of data.prepare on their own: buckets and crops, window plans, shot cuts, resampling,
captions, splits, cache keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_helpers import moving_clip

from core.checks import resolution_base
from core.config import ConfigError
from data.buckets import Bucket, choose_bucket, make_buckets, resize_crop, upscale_needed
from data.cache import model_shard, model_slug
from data.captions import find_caption, load_metadata, with_trigger
from data.prepare import assign_splits
from data.video import resample_indices
from data.windows import detect_scenes, plan_windows

ASPECTS = [16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16]


def test_presets_keep_wan_sizes_and_buckets_are_multiples_of_16():
    b480, b720 = make_buckets("480p", ASPECTS), make_buckets("720p", ASPECTS)
    assert Bucket(480, 832) in b480 and Bucket(832, 480) in b480
    assert Bucket(720, 1280) in b720 and Bucket(1280, 720) in b720
    for bucket in b480 + b720 + make_buckets("64p", ASPECTS):
        assert bucket.height % 16 == 0 and bucket.width % 16 == 0
    for bucket in b480:  # every aspect keeps roughly the preset's pixel count
        assert abs(bucket.height * bucket.width / (480 * 832) - 1) < 0.08
    assert resolution_base("64p") == (64, 112)
    with pytest.raises(ConfigError, match="resolution='500p'"):
        resolution_base("500p")


def test_clips_go_to_the_nearest_aspect_bucket():
    buckets = make_buckets("480p", ASPECTS)
    assert choose_bucket(1080, 1920, buckets) == Bucket(480, 832)
    assert choose_bucket(1920, 1080, buckets) == Bucket(832, 480)
    assert choose_bucket(1000, 1000, buckets).aspect == 1.0
    assert choose_bucket(2160, 3840 * 2.39 / 1.78, buckets) == Bucket(480, 832)  # scope goes to the widest
    assert upscale_needed(240, 416, Bucket(480, 832)) == 2.0


def test_resize_crop_keeps_the_centre_and_the_size():
    frames = np.zeros((3, 100, 300, 3), np.uint8)
    frames[:, 40:60, 140:160] = 255  # a white square at the centre of a 3:1 frame
    frames[:, :, :20] = 128  # a grey band on the left edge, cropped away by a 16:9 bucket
    out = resize_crop(frames, Bucket(64, 112))
    assert out.shape == (3, 3, 64, 112) and out.dtype == torch.uint8
    centre = out[:, :, 26:38, 50:62].float().mean()
    assert centre > 200 and out[:, :, :, :4].float().mean() < 5


def test_window_plans_respect_stride_scenes_limits_and_keyframes():
    starts = [w.start for w in plan_windows(100, 33, 0, 16)]
    assert starts == [0, 33, 66]  # the 1-frame tail is left out, never padded
    assert [w.start for w in plan_windows(50, 9, 4, 16)][:3] == [0, 4, 8]
    scenes = [(0, 20), (20, 45)]
    windows = plan_windows(45, 9, 0, 16, scenes)
    assert all(any(lo <= w.start and w.stop <= hi for lo, hi in scenes) for w in windows)
    assert len(plan_windows(1000, 9, 0, 16, max_windows=5)) == 5
    with_keys = plan_windows(40, 9, 0, 16, keyframes=True)
    keys = [w for w in with_keys if w.kind == "keyframe"]
    assert len(keys) == 4 and all(k.num_frames == 1 for k in keys) and keys[0].start == 4
    assert len({w.tag for w in with_keys}) == len(with_keys)  # tags are unique cache keys


def test_shot_detection_finds_a_hard_cut():
    frames = moving_clip(40, 72, 128, cut_at=23)
    assert detect_scenes(frames, 16.0, threshold=27.0, min_len=4) == [(0, 23), (23, 40)]


def test_resampling_follows_timestamps():
    stamps_30 = np.arange(60) / 30.0  # 2 s at 30 fps -> 32 frames at 16 fps, evenly picked
    idx = resample_indices(stamps_30, 2.0, 16.0)
    assert len(idx) == 32 and idx[0] == 0 and idx[-1] in (57, 58)
    # variable frame rate: a frame held for 0.5 s is repeated, not skipped over
    vfr = np.array([0.0, 0.0625, 0.125, 0.625, 0.6875])
    idx = resample_indices(vfr, 0.75, 16.0)
    assert len(idx) == 12 and list(idx[:4]) == [0, 1, 2, 2] and list(idx[-2:]) == [3, 4]


def test_captions_sidecar_metadata_and_trigger(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("  a man\nwalks  ")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.mp4").write_bytes(b"x")
    (tmp_path / "c.mp4").write_bytes(b"x")
    (tmp_path / "c.txt").write_text("   ")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "sub/b.mp4", "text": "a square room"}\n')
    table = load_metadata(tmp_path / "metadata.jsonl")
    assert find_caption(tmp_path / "a.mp4", tmp_path, table) == ("a man walks", "sidecar")
    assert find_caption(tmp_path / "sub" / "b.mp4", tmp_path, table) == ("a square room", "metadata")
    caption, why = find_caption(tmp_path / "c.mp4", tmp_path, table)
    assert caption is None and "c.txt is empty" in why
    assert with_trigger("a man walks", "elturco style") == "elturco style, a man walks"
    assert with_trigger("Elturco style, a man", "elturco style") == "Elturco style, a man"
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(ConfigError, match="line 1 is not JSON"):
        load_metadata(tmp_path / "bad.jsonl")


def test_split_is_deterministic_by_path_and_holds_out_whole_clips():
    sources = [f"clip_{i:03d}.mp4" for i in range(200)]
    splits = assign_splits(sources, 0.2)
    assert splits == assign_splits(list(reversed(sources)), 0.2)  # order does not matter
    assert 20 < sum(v == "val" for v in splits.values()) < 60
    assert set(assign_splits(sources[:2], 0.1).values()) == {"train", "val"}  # at least one held out
    assert set(assign_splits(sources[:5], 0.0).values()) == {"train"}


def test_cache_paths_separate_models_and_sizes(tmp_path):
    a = model_shard(tmp_path, "Wan2.1-I2V-14B", "480x832", "ab" * 32)
    assert a != model_shard(tmp_path, "Wan2.1-I2V-14B-v2", "480x832", "ab" * 32)
    assert a != model_shard(tmp_path, "Wan2.1-I2V-14B", "720x1280", "ab" * 32)
    assert model_slug("a/b") != model_slug("a_b") and "/" not in model_slug("a/b")


def test_scaled_reader_returns_the_requested_size_and_matches_a_torch_resize(tmp_path):
    from data_helpers import write_clip

    from data.video import ScaledReader, read_clip, resize_uint8

    for (h, w), size in (((64, 112), (48, 84)), ((64, 64), (48, 48))):  # 48x48: decord's own scaler fails here
        path = write_clip(tmp_path / f"c{h}x{w}.mp4", frames=6, height=h, width=w)
        frames = ScaledReader(path, (h, w), size).read(np.arange(6))
        assert frames.shape == (6, *size, 3) and frames.dtype == np.uint8
        reference = resize_uint8(read_clip(path, np.arange(6)), size)
        assert np.abs(frames.astype(int) - reference.astype(int)).mean() < 6
