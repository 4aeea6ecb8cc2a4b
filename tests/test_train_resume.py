"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed logs the same per-step
losses (and ends with the same adapter) as an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.train_support import ROOT, run_args, subprocess_env
from train import stage1
from train.checkpoint import list_checkpoints
from train.tracking import read_metrics

pytest_plugins = ("tests.train_fixtures",)  # fixtures: style_set, one_thread
pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 30


def _args(style_set: Path, tiny_cfg, out: Path) -> list[str]:
    # dropout > 0 and 2-window batches with accumulation: the global RNG, the noise stream, the
    # data position and the optimizer/scheduler state must all come back for equal losses
    return run_args(style_set, tiny_cfg, out, f"max_steps={STEPS}", "checkpoint.every=4", "checkpoint.keep_last=2",
                    "heldout=false", "lora.dropout=0.1", "grad_accum=2", "optim.warmup_steps=3")


def test_resume_after_sigkill_matches_uninterrupted_run(style_set: Path, tiny_cfg, tmp_path: Path) -> None:
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    cmd = [sys.executable, "-m", "train.stage1", *_args(style_set, tiny_cfg, killed)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / "checkpoint-000004" / "trainer_state.json"
    deadline = time.monotonic() + 240
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.kill()
    _, err = proc.communicate()
    assert first.is_file(), err.decode()[-2000:]
    assert proc.returncode == -9, "the run ended before it could be killed"
    assert not (killed / "results.json").exists()
    interrupted_at = max(read_metrics(killed / "metrics.jsonl"))
    assert interrupted_at < STEPS

    assert stage1.main(_args(style_set, tiny_cfg, reference)) == 0
    assert stage1.main(_args(style_set, tiny_cfg, killed)) == 0  # resume=auto picks the latest checkpoint

    ref, resumed = read_metrics(reference / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert sorted(resumed) == list(range(1, STEPS + 1))
    assert [resumed[s]["loss"] for s in resumed] == [ref[s]["loss"] for s in resumed]  # exact, not approximate
    assert [resumed[s]["lr"] for s in resumed] == [ref[s]["lr"] for s in resumed]
    a = load_file(str(reference / "lora" / "style.safetensors"))
    b = load_file(str(killed / "lora" / "style.safetensors"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    # atomic, pruned checkpoints: only complete folders, the last keep_last of them, no temp folders left
    names = [p.name for p in list_checkpoints(killed / "checkpoints")]
    assert names == ["checkpoint-000028", "checkpoint-000030"]
    assert not list((killed / "checkpoints").glob(".*"))
