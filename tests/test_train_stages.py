"""Stage 1 then stage 2 on the tiny model and the synthetic style set: each lowers the held-out
flow-matching loss it is judged on, results land in the run folder, W&B offline holds the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.config import ConfigError, load_config
from core.schema import TrainConfig
from tests.train_support import read_wandb_history, run_args
from train import stage1, stage2
from train.evaluate import evaluate_loras
from train.tracking import read_metrics

pytest_plugins = ("tests.train_fixtures",)  # fixtures: style_set, one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage1_then_stage2_lower_heldout_loss(style_set: Path, tiny_cfg, tmp_path: Path) -> None:
    s1, s2 = tmp_path / "stage1", tmp_path / "stage2"
    assert stage1.main(run_args(style_set, tiny_cfg, s1, "max_steps=60", "tracking.report_to=[wandb]",
                                "tracking.log_every=5", "validation.at_end=true", "checkpoint.every=0")) == 0
    r1 = json.loads((s1 / "results.json").read_text())
    # seed 0 on CPU is deterministic: observed 1.518 -> 1.208; the margin leaves room for library drift
    assert r1["loss_after"] < r1["loss_before"] - 0.1, r1
    assert r1["loss_base"] == r1["loss_before"] and r1["heldout_windows"] >= 4

    # validation samples: mp4 + first/middle/last frames
    sample_dir = s1 / "samples" / "step-000060"
    for name in ("sample_0.mp4", "sample_0_first.png", "sample_0_middle.png", "sample_0_last.png"):
        assert (sample_dir / name).stat().st_size > 0, name

    # the offline W&B run holds the metrics of metrics.jsonl, every log_every steps
    run_files = list((s1 / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    history = {h["_step"]: h for h in read_wandb_history(run_files[0]) if "loss" in h}
    local = read_metrics(s1 / "metrics.jsonl")
    assert sorted(local) == list(range(1, 61))
    assert sorted(history) == list(range(5, 61, 5)), f"W&B history steps {sorted(history)}"
    for step in (5, 60):
        for key in ("loss", "lr", "grad_norm", "samples_per_s", "tokens_per_s"):
            assert history[step][key] == pytest.approx(local[step][key], rel=1e-6), (step, key)
    assert any("samples/video_0" in key for h in read_wandb_history(run_files[0]) for key in h)

    assert stage2.main(run_args(style_set, tiny_cfg, s2, f"base_lora={s1}", "max_steps=60", "checkpoint.every=0",
                                "tokenization.rho_range=[0.3,0.7]")) == 0
    r2 = json.loads((s2 / "results.json").read_text())
    assert r2["tokenization"] == "cat" and r2["eval_rho"] == 0.5
    assert r2["loss_before"] < r2["loss_base"], r2  # the style LoRA already helps on CAT windows
    assert r2["loss_after"] < r2["loss_before"] - 0.01, r2  # observed 0.702 -> 0.672 (target: cat.oracle_velocity)
    rhos = [m["rho"] for m in read_metrics(s2 / "metrics.jsonl").values()]
    assert all(0.3 <= r <= 0.7 for r in rhos) and max(rhos) - min(rhos) > 0.2  # rho drawn per step
    assert all(m["tokens_per_s"] > 0 for m in read_metrics(s2 / "metrics.jsonl").values())

    # the exported files reproduce the recorded numbers through the public evaluation function
    style_file, motion_file = Path(r1["lora"]["diffusers"]), Path(r2["lora"]["diffusers"])
    after = evaluate_loras(tiny_cfg, style_set, [style_file, motion_file], tokenization="cat", rho=0.5)
    assert after == pytest.approx(r2["loss_after"], rel=1e-5)
    base = evaluate_loras(tiny_cfg, style_set, [], tokenization="cat", rho=0.5)
    assert base == pytest.approx(r2["loss_base"], rel=1e-5)


def test_configs_load_and_reject_bad_values() -> None:
    for path in ("configs/stage1_style.yaml", "configs/stage2_motion.yaml"):
        cfg = load_config(TrainConfig, path)
        assert cfg.max_steps > 0 and cfg.data.synthetic_if_missing
    with pytest.raises(ConfigError, match="lora.rank"):
        load_config(TrainConfig, "configs/stage1_style.yaml", ["lora.rank=0"])
    with pytest.raises(ConfigError, match="timestep_sampling"):
        load_config(TrainConfig, "configs/stage1_style.yaml", ["objective.timestep_sampling=cubic"])
    with pytest.raises(ConfigError, match="rho_range"):
        load_config(TrainConfig, "configs/stage2_motion.yaml", ["tokenization.rho_range=[0.9,0.2]"])


def test_unknown_lora_target_is_a_config_error(style_set: Path, tiny_cfg, tmp_path: Path, capsys) -> None:
    from core.config import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: stage1.main(run_args(style_set, tiny_cfg, tmp_path / "bad", "lora.targets=[attn2.to_z]")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "attn2.to_z" in err and "attn2.to_q" in err  # names the valid per-block layers
