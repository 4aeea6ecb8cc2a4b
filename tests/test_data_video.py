"""The one video reader: decord first, PyAV when decord fails (injected here, so any CPU shows it), both
reasons when both fail; and what data.prepare makes of each case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import break_decord, pyav_frames, write_clip, write_vfr_clip

import data.video as video
from core.config import load_config
from core.schema import PrepareConfig
from data.dataset import load_manifest_rows
from data.prepare import prepare
from data.video import ScaledReader, VideoError, probe

SCALED_MEAN_TOLERANCE = 1.0  # of 255; measured 0.44-0.56 (64x112, 144x256, 360x640 halved, swscale bicubic)
SCALED_MAX_TOLERANCE = 16  # measured 10-11


def test_pyav_fallback_equals_decord_where_both_decode(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "c.mp4", frames=12, height=64, width=112)
    idx = np.array([0, 1, 1, 5, 11])  # repeats, as sample-and-hold resampling gives
    for size in ((64, 112), (32, 56)):
        first = ScaledReader(path, (64, 112), size)
        reference = first.read(idx)
        assert first.decoder == "decord", "precondition: decord reads this clip on this machine"
        with monkeypatch.context() as mp:
            break_decord(mp, "batch")
            fallback = ScaledReader(path, (64, 112), size)
            frames = fallback.read(idx)
        assert fallback.decoder == "pyav" and "DECORDArrayCopyFromTo" in fallback.decord_error
        assert frames.shape == reference.shape == (5, *size, 3) and frames.dtype == np.uint8
        diff = np.abs(frames.astype(int) - reference.astype(int))
        if size == (64, 112):
            assert diff.max() == 0  # full size: the same pixels
        else:
            assert diff.mean() < SCALED_MEAN_TOLERANCE and diff.max() <= SCALED_MAX_TOLERANCE, (diff.mean(), diff.max())


def test_pyav_probe_gives_decords_timestamps(tmp_path, monkeypatch):
    path = write_vfr_clip(tmp_path / "vfr.mp4")
    by_decord = probe(path)
    break_decord(monkeypatch, "open")
    by_pyav = probe(path)
    assert (by_decord.decoder, by_pyav.decoder) == ("decord", "pyav")
    assert "injected: decord cannot open it" in by_pyav.decord_error
    assert by_pyav.num_frames == by_decord.num_frames == 40 and by_pyav.variable_fps and by_decord.variable_fps
    assert (by_pyav.height, by_pyav.width) == (by_decord.height, by_decord.width)
    np.testing.assert_allclose(by_pyav.timestamps, by_decord.timestamps, atol=1e-6)
    assert abs(by_pyav.duration - by_decord.duration) < 1e-6


def test_both_decoders_failing_names_both(tmp_path, monkeypatch):
    path = write_clip(tmp_path / "c.mp4", frames=6)
    break_decord(monkeypatch, "batch")
    monkeypatch.setattr(video._PyAVFrames, "read", lambda self, idx: (_ for _ in ()).throw(OSError("injected: PyAV")))
    with pytest.raises(VideoError) as info:
        ScaledReader(path, (64, 112)).read(np.arange(3))
    assert str(info.value).startswith("decode failed in source frames 0..2: decord: Check failed")
    assert "DECORDArrayCopyFromTo" in str(info.value) and "PyAV: injected: PyAV" in str(info.value)


def _prepare(src: Path, out: Path) -> dict:
    overrides = [f"input_dir={src}", f"output_dir={out}", "num_frames=9", "resolution=64p", "encode=false"]
    return prepare(load_config(PrepareConfig, "configs/data.yaml", overrides))


@pytest.fixture(scope="module")
def two_clips(tmp_path_factory):
    """One clip read at full size (64x112) and one decoded scaled (128x224 -> 64x112 bucket)."""
    src = tmp_path_factory.mktemp("clips")
    write_clip(src / "full.mp4", frames=12)
    write_clip(src / "scaled.mp4", frames=12, height=128, width=224)
    return src


@pytest.mark.parametrize("mode", ["open", "batch", "shape"])
def test_a_clip_decord_fails_on_still_lands_in_the_manifest_with_pyavs_frames(two_clips, tmp_path, monkeypatch, mode):
    import data.ingest as ingest

    seen: dict[tuple[str, int], np.ndarray] = {}
    real_resize_crop = ingest.resize_crop

    def spy(frames, bucket):  # the frames prepare decoded, in window order
        seen[(bucket.name, len(seen))] = frames.copy()
        return real_resize_crop(frames, bucket)

    monkeypatch.setattr(ingest, "resize_crop", spy)
    break_decord(monkeypatch, mode)
    summary = _prepare(two_clips, tmp_path / "out")
    rows = load_manifest_rows(tmp_path / "out")
    assert sorted({r["source"] for r in rows}) == ["full.mp4", "scaled.mp4"] and summary["rejects"] == 0
    decoded = list(seen.values())
    assert len(decoded) == len(rows) == 2
    for frames, row in zip(decoded, sorted(rows, key=lambda r: r["source"]), strict=True):
        path = two_clips / row["source"]
        indices = np.arange(row["source_start_frame"], row["source_end_frame"] + 1)
        scaled = row["source"] == "scaled.mp4"
        reference = pyav_frames(path, indices, (64, 112) if scaled else None)
        assert frames.shape == reference.shape and np.array_equal(frames, reference)
    notes = (tmp_path / "out" / "notices.jsonl").read_text()
    assert notes.count("PyAV") == 2  # the user is told which clips the fallback read


def test_a_clip_both_decoders_fail_on_is_rejected_with_both_reasons(two_clips, tmp_path, monkeypatch):
    break_decord(monkeypatch, "batch")
    monkeypatch.setattr(
        video._PyAVFrames, "read", lambda self, idx: (_ for _ in ()).throw(OSError("injected PyAV failure"))
    )
    summary = _prepare(two_clips, tmp_path / "out")
    assert summary["windows"] == 0
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in rejects) == ["full.mp4", "scaled.mp4"]
    for entry in rejects:
        assert entry["stage"] == "decode" and "DECORDArrayCopyFromTo" in entry["reason"]
        assert "PyAV: injected PyAV failure" in entry["reason"]
    assert "PyAV" not in (tmp_path / "out" / "notices.jsonl").read_text()  # no "decoded with PyAV" claim
    # and at probe time: neither decoder opens the file
    monkeypatch.setattr(video, "_probe_pyav", lambda path: (_ for _ in ()).throw(VideoError("injected: no PyAV")))
    break_decord(monkeypatch, "open")
    with pytest.raises(
        VideoError, match="not a readable video: decord: injected: decord cannot open it; PyAV: injected"
    ):
        probe(two_clips / "full.mp4")
