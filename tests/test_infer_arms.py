"""Typed A/B results: a third arm flows through aggregation, report.json (schema), report.md and plots
with no code naming it, and results survive the JSON round trip ranks use."""

from __future__ import annotations

import json

import pytest

from infer.arms import ArmRun, ClipResult, SeedRun, SweepRow
from infer.metrics import metric_specs
from infer.report import aggregate_levels, aggregate_sweep, write_report_json, write_report_md
from infer.report_schema import SCHEMA_VERSION, validate

ARMS = [
    {"name": "uniform", "label": "uniform"},
    {"name": "cat", "label": "CAT"},
    {"name": "half", "label": "CAT rho 0.5"},
]


def _arm(s_per_step: float, tokens: int) -> ArmRun:
    return ArmRun(
        s_per_step=s_per_step,
        s_per_video=10 * s_per_step,
        frames_per_s=9 / (10 * s_per_step),
        tokens_per_step=[tokens, tokens],
        step_seconds=[s_per_step, s_per_step],
        peak_memory_mb=100.0,
        lpips_vs_reference=0.1,
        psnr_vs_reference=20.0,
    )


def _clip(seed_speeds: list[tuple[float, float, float]]) -> ClipResult:
    runs = [
        SeedRun(
            seed=i,
            arms={"uniform": _arm(u, 48), "cat": _arm(c, 24), "half": _arm(h, 12)},
            lpips_vs_baseline={"cat": 0.01, "half": 0.03},
            oracle_latent_error={"uniform": 0.0, "cat": 0.02, "half": 0.05},
        )
        for i, (u, c, h) in enumerate(seed_speeds)
    ]
    return ClipResult(
        path="a.mp4", level="SI-low/TI-low", arms=ARMS, runs=runs, sweep=[SweepRow("cat", 0.25, 12.0, 3.0, 0.05, None)]
    )


def _report(clips: list[ClipResult]) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "arms": ARMS,
        "created": "now",
        "model_id": "m",
        "device": "cpu",
        "dtype": "fp32",
        "lpips_calibrated": False,
        "lpips_note": "uncalibrated: test",
        "metrics": metric_specs(False, "uncalibrated: test"),
        "settings": {},
        "levels": aggregate_levels(clips, ARMS, False, ideal=lambda u, c: u / c),
        "clips": [c.to_json() for c in clips],
        "rejected": [],
        "rho_sweep": aggregate_sweep(clips, ARMS),
    }


def test_a_third_arm_reaches_every_output(tmp_path):
    from infer.plots import plot_levels, plot_rho_curve

    clip = _clip([(1.0, 0.5, 0.25), (1.0, 0.5, 0.5)])
    report = _report([clip])
    (level,) = report["levels"]
    assert level["tokens_half"] == 12 and level["tokens_cat"] == 24 and level["tokens_uniform"] == 48
    assert level["speedup_half_vs_uniform"] == pytest.approx(3.0) and level["speedup_cat_vs_uniform"] == 2.0
    assert level["speedup"] == level["speedup_cat_vs_uniform"]  # schema 1's name: the first candidate
    assert level["ideal_speedup_half_vs_uniform"] == 4.0 and level["lpips_half_vs_uniform"] == pytest.approx(0.03)
    assert level["oracle_latent_error"] == {"uniform": 0.0, "cat": 0.02, "half": 0.05}
    assert report["rho_sweep"] == [
        {
            "arm": "cat",
            "rho": 0.25,
            "tokens_cat": 12.0,
            "speedup": 3.0,
            "lpips_cat_vs_uniform": 0.05,
            "vmaf_cat_vs_uniform": None,
        }
    ]
    write_report_json(report, tmp_path / "report.json")
    md = write_report_md(report, tmp_path / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| level | runs"))
    assert "tokens CAT rho 0.5" in header and "speedup CAT rho 0.5 (95% CI)" in header
    assert "perfect model (oracle): latent error CAT rho 0.5" in md
    for path in (
        plot_levels(report["levels"], ARMS, False, tmp_path / "levels.png"),
        plot_rho_curve(report["rho_sweep"], ARMS, False, tmp_path / "rho.png"),
    ):
        assert path.stat().st_size > 0


def test_the_schema_follows_the_arms_the_report_names():
    report = _report([_clip([(1.0, 0.5, 0.25)])])
    assert validate(report) == []
    del report["levels"][0]["tokens_half"]
    report["clips"][0]["runs"][0]["half"]["s_per_step"] = "slow"
    errors = validate(report)
    assert any("tokens_half" in e for e in errors) and any("half.s_per_step" in e for e in errors), errors
    with pytest.raises(ValueError, match="does not match its schema"):
        write_report_json(report, None)


def test_results_survive_the_json_round_trip():
    clip = _clip([(1.0, 0.5, 0.25)])
    data = json.loads(json.dumps(clip.to_json(with_sweep=True)))
    back = ClipResult.from_json(data, ARMS)
    assert back == clip
    assert list(back.runs[0].arms) == ["uniform", "cat", "half"] and back.runs[0].speedup("half") == 4.0
