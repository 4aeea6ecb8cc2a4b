"""A run that produced nothing it promised is a failure: one line on stderr, a non-zero exit, and the
report (with its rejects) still written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_helpers import write_clip

from core.config import run_cli


def one_line(err: str) -> str:
    """The single error line on stderr (progress bars aside), which is also the last line."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    return errors[0]


def test_ab_with_no_usable_clip_exits_1_and_writes_the_report(tmp_path, tiny_cfg, capsys):
    from infer.ab import main

    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.mp4").write_text("not a video")
    (clips / "b.mp4").write_bytes(b"")
    out = tmp_path / "out"
    code = main(
        [
            f"clips_dir={clips}",
            f"output_dir={out}",
            f"model.cache_dir={tiny_cfg.cache_dir}",
            "model.device=cpu",
            "height=64",
            "width=64",
            "steps=1",
            "seeds=[0]",
            "rho_sweep=[]",
        ]
    )
    assert code == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: the A/B produced no result: no clip ran (2 rejected; first: a.mp4: ")
    report = json.loads((out / "report.json").read_text())
    assert report["levels"] == [] and sorted(Path(r["path"]).name for r in report["rejected"]) == ["a.mp4", "b.mp4"]
    assert "not a readable video" in (out / "report.md").read_text()


def test_demo_with_missing_levels_exits_1(monkeypatch, capsys, tmp_path):
    import infer.demo as demo

    rejected = [{"path": f"/x/SI-high_TI-{i}.mp4", "reason": "decode failed: decord: X; PyAV: Y"} for i in range(9)]
    monkeypatch.setattr(
        demo,
        "run_demo",
        lambda cfg: {
            "report": tmp_path / "report.md",
            "report_json": tmp_path / "report.json",
            "videos": tmp_path,
            "loras": tmp_path,
            "levels": 0,
            "seconds": {},
            "rejected": rejected,
            "expected_levels": demo.expected_levels(cfg.ab),
        },
    )
    assert demo.main([f"output_dir={tmp_path}"]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("error: demo A/B has 0 of 9 redundancy levels (9 clip(s) rejected; first: SI-high_TI-0.mp4")


def test_prepare_with_zero_windows_exits_1_in_one_line(tmp_path, capsys):
    from data.prepare import main

    src = tmp_path / "clips"
    write_clip(src / "five.mp4", frames=5)
    out = tmp_path / "out"
    assert main([f"input_dir={src}", f"output_dir={out}", "encode=false", "num_frames=9"]) == 1
    assert one_line(capsys.readouterr().err) == (
        f"error: no window was produced, nothing was replaced; every file's reason is in {out / 'rejects.jsonl'}"
    )
    assert [json.loads(x)["path"] for x in (out / "rejects.jsonl").read_text().splitlines()] == ["five.mp4"]
    assert not (out / "manifest").exists() and not (out / "prepare.json").exists()


def test_training_on_zero_windows_stops_before_the_model_loads(tmp_path, tiny_cfg, monkeypatch, capsys):
    from train_support import run_args

    import core.models.wan21.loading
    import train.stage1 as stage1
    import train.trainer
    from core.config import load_config
    from core.schema import PrepareConfig
    from data.prepare import prepare, split_score

    src = tmp_path / "clips"
    write_clip(src / "only.mp4", frames=6)
    assert split_score("only.mp4") < 0.9  # precondition: the single clip lands in val, none in train
    prepared = tmp_path / "prepared"
    prepare(
        load_config(
            PrepareConfig,
            "configs/data.yaml",
            [f"input_dir={src}", f"output_dir={prepared}", "num_frames=5", "encode=false", "val_fraction=0.9"],
        )
    )

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the zero-window check")

    monkeypatch.setattr(core.models.wan21.loading, "load_components", no_model)
    monkeypatch.setattr(train.trainer, "load_components", no_model)
    with pytest.raises(SystemExit) as info:
        run_cli(lambda: stage1.main(run_args(prepared, tiny_cfg, tmp_path / "run", "max_steps=1")))
    assert info.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line == (
        f"error: data.prepared_dir '{prepared}' has 0 training windows (1 in the manifest); rerun "
        "python -m data.prepare (its rejects.jsonl says why each clip was not used)"
    )
