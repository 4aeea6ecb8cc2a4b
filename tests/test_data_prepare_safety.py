"""data.prepare never destroys a good dataset, stops at once on errors that are not about one clip,
and misses no input: links to folders are followed, dangling links and its own output folders reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from data_helpers import write_clip

from core.config import run_cli
from data.dataset import load_manifest_rows
from data.prepare import main

SMALL = ("num_frames=5", "resolution=32p")


def args(src: Path, out: Path, cache_dir: str, *extra: str) -> list[str]:
    return [f"input_dir={src}", f"output_dir={out}", f"model.cache_dir={cache_dir}", "model.device=cpu", *SMALL, *extra]


def snapshot(out: Path) -> dict[str, bytes]:
    """The files a user relies on: manifest, summary, card, reports."""
    names = ["prepare.json", "README.md", "rejects.jsonl", "notices.jsonl", "prepare.yaml"]
    files = {n: (out / n).read_bytes() for n in names}
    files.update(
        {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "manifest").rglob("*")) if p.is_file()}
    )
    return files


def error_line(err: str) -> str:
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and sum(x.startswith("error") for x in lines) == 1, lines[-3:]
    return lines[-1]


@pytest.fixture
def good(tmp_path, tiny_cfg):
    """A folder with two clips and a good encoded dataset prepared from it."""
    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6)
    write_clip(src / "b.mp4", frames=6, caption="a woman runs")
    out = tmp_path / "out"
    assert main(args(src, out, tiny_cfg.cache_dir)) == 0
    return src, out, snapshot(out)


def count_calls(monkeypatch, module, name: str) -> list:
    calls: list = []
    real = getattr(module, name)

    def spy(*a, **k):
        calls.append(a)
        return real(*a, **k)

    monkeypatch.setattr(module, name, spy)
    return calls


def test_bad_model_path_stops_before_any_clip_and_keeps_the_dataset(good, tiny_cfg, tmp_path, monkeypatch, capsys):
    import data.ingest

    src, out, before = good
    probed = count_calls(monkeypatch, data.ingest, "probe")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main(args(src, out, tiny_cfg.cache_dir, f"model.path={tmp_path / 'no-such-model'}")))
    assert info.value.code == 2 and probed == []
    line = error_line(capsys.readouterr().err)
    assert line.startswith(f"error: model.path '{tmp_path / 'no-such-model'}' is not a folder; expected a diffusers")
    assert snapshot(out) == before and len(load_manifest_rows(out)) == 2


def test_a_rerun_with_no_window_replaces_nothing(good, tiny_cfg, capsys):
    src, out, before = good
    capsys.readouterr()
    assert main(args(src, out, tiny_cfg.cache_dir, "num_frames=33")) == 1  # every clip too short now
    failed = out / "failed_run" / "rejects.jsonl"
    assert error_line(capsys.readouterr().err) == (
        f"error: no window was produced, nothing was replaced; every file's reason is in {failed}"
    )
    assert snapshot(out) == before
    assert sorted(json.loads(x)["path"] for x in failed.read_text().splitlines()) == ["a.mp4", "b.mp4"]
    assert main(args(src, out, tiny_cfg.cache_dir)) == 0 and not (out / "failed_run").exists()


def test_a_disk_error_stops_the_run_at_once_and_keeps_the_dataset(good, tiny_cfg, monkeypatch, capsys):
    import data.cache
    import data.ingest

    src, out, before = good
    processed = count_calls(monkeypatch, data.ingest.ClipIngest, "process")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.cache, "save_shard", full_disk)
    capsys.readouterr()
    assert main(args(src, out, tiny_cfg.cache_dir, "resolution=48p")) == 1  # new size: caches must be written
    assert error_line(capsys.readouterr().err) == (
        "error: data.prepare stopped at 'a.mp4': OSError: [Errno 28] No space left on device; "
        f"nothing was replaced in {out}"
    )
    assert len(processed) == 1 and snapshot(out) == before  # not one reject per clip: the run stopped


def test_an_unwritable_output_folder_is_refused_before_decoding(tmp_path, monkeypatch, capsys):
    import data.ingest
    import data.prepare

    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6)
    probed = count_calls(monkeypatch, data.ingest, "probe")

    def read_only(*a, **k):  # tests may run as root, where chmod does not stop writes: inject the failure
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as mp:
        mp.setattr(data.prepare.tempfile, "NamedTemporaryFile", read_only)
        with pytest.raises(SystemExit) as info:
            run_cli(lambda: main([f"input_dir={src}", f"output_dir={tmp_path / 'ro'}", "encode=false", *SMALL]))
    assert info.value.code == 2 and probed == []
    assert error_line(capsys.readouterr().err) == (
        f"error: output_dir '{tmp_path / 'ro'}' is not writable (Permission denied); choose a folder you can write to"
    )
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: main([f"input_dir={src}", f"output_dir={tmp_path / 'file'}", "encode=false", *SMALL]))
    assert info.value.code == 2 and probed == []
    assert error_line(capsys.readouterr().err) == (
        f"error: output_dir '{tmp_path / 'file'}' is a file, not a folder; pass a folder for the dataset"
    )


def test_links_and_own_output_folders_are_never_silently_missing(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    write_clip(elsewhere / "linked.mp4", frames=6)
    src = tmp_path / "clips"
    write_clip(src / "a.mp4", frames=6)
    (src / "shots").symlink_to(elsewhere, target_is_directory=True)  # a clip inside a linked folder
    (src / "loop").symlink_to(src, target_is_directory=True)  # a link back up: listed once, no endless walk
    (src / "gone.mp4").symlink_to(tmp_path / "deleted.mp4")  # a dangling link
    out = src / "prepared"  # the output folder inside the input folder
    run = [f"input_dir={src}", f"output_dir={out}", "encode=false", *SMALL]
    assert main(run) == 0
    first = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert first == [
        {
            "path": "gone.mp4",
            "stage": "listing",
            "reason": f"broken symbolic link: its target '{tmp_path / 'deleted.mp4'}' does not exist",
        }
    ]
    assert sorted(r["source"] for r in load_manifest_rows(out)) == ["a.mp4", "shots/linked.mp4"]
    notes = {e["path"]: e["note"] for e in map(json.loads, (out / "notices.jsonl").read_text().splitlines())}
    assert notes["loop/"] == "the same folder as '.' (symbolic link): listed once"
    assert main(run) == 0  # rerun: its own caches, card and reports are not inputs
    assert [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()] == first
    notes = {e["path"]: e["note"] for e in map(json.loads, (out / "notices.jsonl").read_text().splitlines())}
    assert notes["prepared/"] == "an output folder of data.prepare (not input): skipped"
    os.rename(out, src / "old_run")  # another run's output folder, recognised by its prepare.json
    assert main([f"input_dir={src}", f"output_dir={tmp_path / 'out2'}", "encode=false", *SMALL]) == 0
    assert [json.loads(x) for x in (tmp_path / "out2" / "rejects.jsonl").read_text().splitlines()] == first
