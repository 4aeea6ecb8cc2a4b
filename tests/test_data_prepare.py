"""data.prepare end to end on real files: every bad input reported, caches reused and invalidated, the
manifest and CachedWindows as training reads them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from data_helpers import (
    write_audio_only,
    write_clip,
    write_truncated,
    write_vfr_clip,
    write_zero_frames,
)

from core.config import load_config, run_cli
from core.schema import PrepareConfig
from data.dataset import BucketBatchSampler, CachedWindows, collate_windows, load_manifest_rows
from data.encode import expected_model_id
from data.prepare import main, prepare


def run(input_dir: Path, output_dir: Path, cache_dir: str, *extra: str) -> dict:
    overrides = [
        f"input_dir={input_dir}",
        f"output_dir={output_dir}",
        f"model.cache_dir={cache_dir}",
        "model.device=cpu",
        "num_frames=9",
        "resolution=64p",
        *extra,
    ]
    return prepare(load_config(PrepareConfig, "configs/data.yaml", overrides))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def messy(tmp_path_factory, tiny_cfg):
    """A folder with good clips and every kind of bad input, prepared once."""
    src = tmp_path_factory.mktemp("messy")
    write_clip(src / "good.mp4", frames=20)
    write_clip(src / "square.mp4", frames=30, height=96, width=96, fps=30, caption=None)
    (src / "metadata.csv").write_text("file_name,caption\nsquare.mp4,a square room\n")
    write_clip(src / "shots" / "cut.mp4", frames=40, cut_at=20)
    write_vfr_clip(src / "vfr.mp4")
    write_clip(src / "odd.mp4", frames=20, height=57, width=101, pix_fmt="yuv444p")
    write_clip(src / "nocap.mp4", frames=20, caption=None)
    write_clip(src / "five.mp4", frames=5)
    write_clip(src / "tiny.mp4", frames=20, height=24, width=40)
    write_truncated(src / "truncated.mp4")
    write_truncated(src / "truncated_faststart.mp4", faststart=True)
    write_zero_frames(src / "zero.mp4")
    write_audio_only(src / "audio.mp4")
    (src / "text.mp4").write_text("this is not a video\n")
    (src / "empty.mp4").write_bytes(b"")
    (src / "notes.md").write_text("shoot notes\n")
    out = tmp_path_factory.mktemp("messy-out")
    summary = run(
        src, out, tiny_cfg.cache_dir, "split_scenes=true", "trigger=elturco style", "val_fraction=0.3", "encode=false"
    )
    return src, out, summary


def test_every_bad_input_is_reported_with_its_reason(messy):
    _, out, summary = messy
    rejects = {}
    for entry in jsonl(out / "rejects.jsonl"):
        rejects.setdefault(entry["path"], []).append(entry["reason"])
    expected = {
        "five.mp4": "too short: 5 frames",
        "tiny.mp4": "too small: 40x24 needs x2.80 upscaling to fill bucket 112x64",
        "truncated.mp4": "not a readable video",
        "zero.mp4": "zero frames",
        "audio.mp4": "audio-only file",
        "text.mp4": "not a readable video",
        "empty.mp4": "empty file (0 bytes)",
        "notes.md": "not a video file (extension '.md'",
        "nocap.mp4": "no caption: no nocap.txt and no metadata entry (missing_caption=skip)",
    }
    for path, reason in expected.items():
        assert any(reason in r for r in rejects.get(path, [])), (path, rejects.get(path))
    # the faststart-truncated file opens, but its missing half cannot be decoded: reported, not dropped
    assert any("truncated" in r or "decode failed" in r for r in rejects["truncated_faststart.mp4"])
    notices: dict[str, str] = {}
    for entry in jsonl(out / "notices.jsonl"):
        notices[entry["path"]] = notices.get(entry["path"], "") + entry["note"] + "; "
    assert "variable frame rate" in notices["vfr.mp4"]
    assert "odd frame size 101x57" in notices["odd.mp4"] and "upscaled x1.12" in notices["odd.mp4"]
    assert summary["rejects"] == sum(len(v) for v in rejects.values())
    card = (out / "README.md").read_text()
    assert "## Rejects" in card and "audio-only file" in card and (out / "siti_hist.png").stat().st_size > 1000


def test_manifest_rows_windows_and_captions(messy):
    _, out, summary = messy
    rows = load_manifest_rows(out)
    by_source: dict[str, list[dict]] = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
    assert set(by_source) == {"good.mp4", "square.mp4", "shots/cut.mp4", "vfr.mp4", "odd.mp4"}
    assert len(by_source["good.mp4"]) == 2  # 20 frames at 16 fps -> windows at 0 and 9
    assert len(by_source["square.mp4"]) == 1  # 30 frames at 30 fps = 1 s -> 16 frames at 16 fps
    assert by_source["square.mp4"][0]["caption"] == "elturco style, a square room"
    assert by_source["square.mp4"][0]["caption_source"] == "metadata"
    assert by_source["square.mp4"][0]["bucket"] == "80x80"
    assert by_source["good.mp4"][0]["caption"] == "elturco style, a man walks"
    # a window never spans the cut at frame 20: the shot detector split the clip there
    cut = sorted((r["start"], r["start"] + r["num_frames"]) for r in by_source["shots/cut.mp4"])
    assert cut == [(0, 9), (9, 18), (20, 29), (29, 38)]
    for row in rows:
        assert row["num_frames"] == 9 and row["height"] % 16 == 0 and row["width"] % 16 == 0
        assert row["si"] > 0 and row["clip_si"] >= row["si"] and row["clip_ti"] >= row["ti"]
    # VFR: 40 frames lasting sum(durations) seconds are resampled by timestamps, not frame counts
    vfr = by_source["vfr.mp4"]
    assert vfr[0]["variable_fps"] and vfr[0]["source_end_frame"] != 8
    assert {r["split"] for r in rows} == {"train", "val"}
    assert summary["train_windows"] + summary["val_windows"] == len(rows)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_cfg):
    """Two clips in two buckets, encoded with the tiny model, with keyframes (small and short for speed)."""
    src = tmp_path_factory.mktemp("enc")
    write_clip(src / "wide.mp4", frames=6, caption="a man walks")
    write_clip(src / "square.mp4", frames=6, height=64, width=64, caption="a square room")
    out = tmp_path_factory.mktemp("enc-out")
    summary = run(src, out, tiny_cfg.cache_dir, "num_frames=5", "resolution=32p", "keyframes=true", "val_fraction=0.5")
    return out, summary


def test_cached_windows_items_and_batches(encoded, tiny):
    out, summary = encoded
    assert (summary["windows"], summary["keyframes"], summary["encoded"]) == (2, 2, 4)
    ds = CachedWindows(out)
    assert len(ds) == 4
    for i in range(len(ds)):
        item, row = ds[i], ds.rows[i]
        f_lat = 2 if row["kind"] == "window" else 1  # 5 frames -> 2 latent frames; a keyframe -> 1
        h, w = row["height"] // 8, row["width"] // 8
        assert item["latents"].shape == (16, f_lat, h, w) and item["latents"].dtype == torch.float32
        assert item["condition"].shape == (20, f_lat, h, w)
        assert torch.all(item["condition"][:4, 0] == 1) and torch.all(item["condition"][:4, 1:] == 0)
        assert item["text_embeds"].shape == (512, tiny.text_encoder.config.d_model)
        assert item["image_embeds"].shape[-1] == tiny.image_encoder.config.hidden_size
        # Wan2.1 is image-to-video: every window (a keyframe too) has the reference map as the third
        assert item["complexity"].shape == (3, f_lat, h // 2, w // 2)
        assert torch.all(item["complexity"][2, 0] == 0)  # frame 0 is the reference itself
        if row["kind"] == "keyframe":
            assert torch.all(item["complexity"][1] == 0)  # one frame: no temporal change
        assert item["caption"] == row["caption"] and item["window_id"] == row["window_id"]
    train, val = CachedWindows(out, split="train"), CachedWindows(out, split="val")
    assert len(train) + len(val) == len(ds) and len(val) > 0 and len(train) > 0
    assert not {r["source"] for r in train.rows} & {r["source"] for r in val.rows}
    batches = list(BucketBatchSampler(ds, batch_size=2, seed=0))
    assert sorted(i for b in batches for i in b) == list(range(len(ds)))
    assert all(len({ds.shape_key(i) for i in b}) == 1 for b in batches)
    batch = collate_windows([ds[i] for i in batches[0]])
    assert batch["latents"].shape[0] == len(batches[0]) and len(batch["caption"]) == len(batches[0])
    with pytest.raises(ValueError, match="BucketBatchSampler"):
        collate_windows([ds[0], ds[1]] if ds.shape_key(0) != ds.shape_key(1) else [ds[0], ds[2]])
    with pytest.raises(FileNotFoundError, match="no cache for model 'other'"):
        CachedWindows(out, model_id="other")


def test_expected_model_id_matches_the_loaded_model(tiny, tiny_cfg):
    assert expected_model_id(tiny_cfg) == tiny.model_id


def _shard_times(out: Path) -> dict[str, float]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "cache").rglob("*.safetensors")}


def test_cache_reuse_resume_and_invalidation(tmp_path, tiny_cfg):
    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6)
    write_clip(src / "b.mp4", frames=6, caption="a woman runs")
    out = tmp_path / "out"
    small = ("num_frames=5", "resolution=32p")
    first = run(src, out, tiny_cfg.cache_dir, *small)
    assert first["encoded"] == 2 and first["texts_encoded"] == 2 and first["rejects"] == 0
    times = _shard_times(out)

    again = run(src, out, tiny_cfg.cache_dir, *small)  # idempotent: nothing decoded or encoded again
    assert (again["encoded"], again["analysed"], again["texts_encoded"], again["cached"]) == (0, 0, 0, 2)
    assert _shard_times(out) == times

    other = run(src, out, tiny_cfg.cache_dir, *small, "model.model_id=other-model")  # new model id: new caches
    assert other["encoded"] == 2 and other["analysed"] == 0 and other["texts_encoded"] == 2
    assert len(CachedWindows(out, model_id="other-model")) == 2
    assert all(_shard_times(out)[k] == t for k, t in times.items())  # the first model's caches untouched

    bigger = run(src, out, tiny_cfg.cache_dir, "num_frames=5", "resolution=48p")  # new size: re-encoded
    assert bigger["encoded"] == 2 and bigger["analysed"] == 2 and bigger["buckets"] == ["48x80"]
    assert CachedWindows(out)[0]["latents"].shape[-2:] == (6, 10)
    with pytest.raises(FileNotFoundError):  # the other model was never encoded at this size: nothing stale served
        CachedWindows(out, model_id="other-model")

    shard = next(
        p
        for p in (out / "cache").rglob("*.safetensors")
        if "48x80" in str(p) and "tiny" in str(p) and _meta(p).get("source") == "b.mp4"
    )
    shard.unlink()  # an interrupted run: one clip's encodings never written
    resumed = run(src, out, tiny_cfg.cache_dir, "num_frames=5", "resolution=48p")
    assert resumed["encoded"] == 1 and resumed["cached"] == 1


def _meta(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_missing_caption_default_policy_and_no_model_mode(tmp_path):
    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6, caption=None)
    out = tmp_path / "out"
    summary = run(
        src,
        out,
        "unused",
        "num_frames=5",
        "missing_caption=default",
        "default_caption=a quiet scene",
        "trigger=elturco style",
        "encode=false",
    )
    rows = load_manifest_rows(out)
    assert summary["windows"] == 1 and summary["model_id"] is None and summary["encoded"] == 0
    assert rows[0]["caption"] == "elturco style, a quiet scene" and rows[0]["caption_source"] == "default"
    assert "used default_caption" in (out / "notices.jsonl").read_text()
    with pytest.raises(ValueError, match="encode=false"):
        CachedWindows(out)


def test_no_window_at_all_exits_nonzero_and_reports(tmp_path):
    src = tmp_path / "clips"
    src.mkdir()
    (src / "text.mp4").write_text("hello")
    write_clip(src / "five.mp4", frames=5)
    out = tmp_path / "out"
    code = main([f"input_dir={src}", f"output_dir={out}", "encode=false", "num_frames=9"])
    assert code == 1
    assert {e["path"] for e in jsonl(out / "rejects.jsonl")} == {"text.mp4", "five.mp4"}


def test_num_frames_not_4k_plus_1_is_a_one_line_config_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main([f"input_dir={tmp_path}", f"output_dir={tmp_path / 'o'}", "num_frames=32"]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "num_frames=32 is not of the form 4k+1" in err and "33" in err
    with pytest.raises(SystemExit) as missing_dir:
        run_cli(lambda: main([f"input_dir={tmp_path / 'nope'}", f"output_dir={tmp_path / 'o'}"]))
    assert missing_dir.value.code == 2 and "is not a folder" in capsys.readouterr().err


def test_complexity_maps_are_keyed_by_the_familys_geometry(tmp_path):
    """Wan2.1 (16-px cells) and Wan2.2 (32-px cells) prepared into one folder with the same bucket: each
    gets maps on its own patch grid; none is served the other's."""
    from core.models import get_family
    from data.cache import analysis_shard, read_window

    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6, height=72, width=128)
    out = tmp_path / "out"
    shapes, summaries = {}, {}
    same_bucket = ("num_frames=5", "resolution=128p", f"aspect_ratios=[{16 / 9}]", "encode=false")
    for family in ("wan2.1-i2v", "wan2.2-ti2v", "wan2.1-i2v"):
        summary = run(src, out, "unused", *same_bucket, f"model.family={family}")
        row = load_manifest_rows(out)[0]
        shard = analysis_shard(out / "cache", get_family(family).geometry, row["bucket"], row["content_hash"])
        shapes[family] = tuple(read_window(shard, row["tag"], ("complexity",))["complexity"].shape)
        summaries.setdefault(family, summary)
    assert summaries["wan2.1-i2v"]["buckets"] == summaries["wan2.2-ti2v"]["buckets"] == ["128x224"]
    assert summaries["wan2.2-ti2v"]["analysed"] == 1 and summary["analysed"] == 0  # Wan2.1's maps reused after
    assert shapes == {"wan2.1-i2v": (3, 2, 8, 14), "wan2.2-ti2v": (3, 2, 4, 7)}  # + the reference map
