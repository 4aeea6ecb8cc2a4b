"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed logs the same per-step
losses (and ends with the same adapter) as an uninterrupted run."""

from __future__ import annotations

import json
import shutil
import signal
import socket
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


# ---------------------------------------------------------------- damaged checkpoints
def _short(style_set: Path, tiny_cfg, out: Path) -> list[str]:
    return run_args(style_set, tiny_cfg, out, "max_steps=4", "checkpoint.every=2", "checkpoint.keep_last=3",
                    "heldout=false")


@pytest.fixture(scope="module")
def short_reference(style_set: Path, tiny_cfg, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("short") / "run"
    assert stage1.main(_short(style_set, tiny_cfg, out)) == 0
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "truncated adapter": (lambda c: _truncate(c / "adapter" / "style.safetensors"), "adapter/style.safetensors has"),
    "missing optimizer": (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
    "missing noise RNG": (lambda c: (c / "trainer_rng_0.safetensors").unlink(), "trainer_rng_0.safetensors is missing"),
    "half-written": (lambda c: (c / "trainer_state.json").unlink(), "no trainer_state.json"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_checkpoint_is_skipped_for_the_previous_good_one(short_reference: Path, style_set: Path, tiny_cfg,
                                                                 tmp_path: Path, capsys, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(short_reference / "checkpoints", run / "checkpoints")
    damaged = run / "checkpoints" / "checkpoint-000004"
    inject, reason = DAMAGES[damage]
    inject(damaged)
    assert stage1.main(_short(style_set, tiny_cfg, run)) == 0
    out = capsys.readouterr().out
    skipped = [line for line in out.splitlines() if line.startswith("skipping damaged checkpoint")]
    assert len(skipped) == 1 and str(damaged) in skipped[0] and reason in skipped[0], out
    assert "resumed from" in out and "checkpoint-000002 at step 2" in out, out
    a = load_file(str(short_reference / "lora" / "style.safetensors"))
    b = load_file(str(run / "lora" / "style.safetensors"))  # steps 3-4 redone from checkpoint 2: the same adapter
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


# ---------------------------------------------------------------- one run per output_dir, writable output_dir
def test_second_run_into_a_live_output_dir_is_refused_and_a_stale_lock_taken_over(style_set: Path, tiny_cfg,
                                                                                   tmp_path: Path, capsys) -> None:
    from core.config import run_cli
    from train.runlock import LOCK_FILE

    run = tmp_path / "run"
    run.mkdir()
    live = subprocess.Popen(["sleep", "60"])  # stands in for a training that holds the folder
    try:
        (run / LOCK_FILE).write_text(f"{live.pid} {socket.gethostname()}\n")
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda: stage1.main(_short(style_set, tiny_cfg, run)))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"PID {live.pid}" in err[0] and str(run) in err[0], err
        assert not (run / "checkpoints").exists()
    finally:
        live.kill()
        live.wait()
    # the holder is gone (as after SIGKILL): its lock is taken over, and released at the end
    assert stage1.main(_short(style_set, tiny_cfg, run) + ["max_steps=1", "checkpoint.every=0"]) == 0
    assert (run / "results.json").is_file() and not (run / LOCK_FILE).exists()


def test_unwritable_output_dir_is_one_line_before_the_model_loads(style_set: Path, tiny_cfg, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    import os

    import train.trainer
    from core.config import run_cli

    monkeypatch.setattr(train.trainer, "load_components", lambda *a: pytest.fail("the model loaded"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    real_open = os.open

    def read_only(path, flags, *args):  # root ignores chmod: inject EACCES the way a read-only mount answers
        if str(path).startswith(str(tmp_path / "ro")) and flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    for out, expected in ((a_file / "run", "cannot be created"), (tmp_path / "ro", "is not writable (Permission denied)")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(lambda out=out: stage1.main(_short(style_set, tiny_cfg, out)))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0] and str(out) in err[0], err


# ---------------------------------------------------------------- SIGTERM / SIGINT
def _wait_for_steps(proc: subprocess.Popen, metrics: Path, count: int) -> None:
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {count} steps logged: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def _stop_with(sig: signal.Signals, cmd: list[str], metrics: Path, count: int) -> tuple[int, str]:
    # own session: a background job of a non-interactive shell ignores SIGINT, our handler must not depend on that
    proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    _wait_for_steps(proc, metrics, count)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err.decode()


def test_sigterm_and_sigint_checkpoint_the_current_step_and_resume_without_duplicates(style_set: Path, tiny_cfg,
                                                                                      tmp_path: Path) -> None:
    run, metrics = tmp_path / "run", tmp_path / "run" / "metrics.jsonl"
    cmd = [sys.executable, "-m", "train.stage1", *run_args(style_set, tiny_cfg, run, "max_steps=100000",
                                                           "checkpoint.every=0", "heldout=false")]
    code, err = _stop_with(signal.SIGTERM, cmd, metrics, 3)
    assert code == 143, err[-2000:]
    first = max(read_metrics(metrics))
    last_line = [line for line in err.splitlines() if line.strip()][-1]
    assert f"stopped by SIGTERM at step {first}" in last_line and "resume with the same command" in last_line, err
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == [f"checkpoint-{first:06d}"]
    assert "Traceback" not in err

    with open(metrics, "a") as handle:  # a step logged after the checkpoint (as a SIGKILL leaves): must not survive
        handle.write(json.dumps({"step": first + 1, "loss": -1.0}) + "\n")
    code, err = _stop_with(signal.SIGINT, cmd, metrics, first + 4)
    assert code == 130, err[-2000:]
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    second = steps[-1]
    assert steps == list(range(1, second + 1)), steps  # every step exactly once, the stale one replaced
    assert all(json.loads(line)["loss"] >= 0 for line in metrics.read_text().splitlines())
    assert f"stopped by SIGINT at step {second}" in err and "Traceback" not in err, err[-2000:]
    assert (run / "checkpoints" / f"checkpoint-{second:06d}" / "trainer_state.json").is_file()


def test_rate_reaches_the_optimizer_deepspeed_steps_after_its_state_is_loaded() -> None:
    """The ZeRO-3 + CPU offload resume gap, reproduced with torch objects: two optimizers sharing their
    param-group dicts (the scheduler's and the one ZeRO steps); loading state into the stepping one gives it
    new dicts, so the scheduler's rate no longer reaches it until the trainer syncs it."""
    from types import SimpleNamespace

    import torch

    from train.trainer import Trainer

    weight = torch.nn.Parameter(torch.zeros(2))
    scheduled = torch.optim.AdamW([weight], lr=1.0)
    stepping = torch.optim.AdamW(scheduled.param_groups, lr=1.0)  # shares the group dicts, as DeepSpeed's does
    scheduler = torch.optim.lr_scheduler.LambdaLR(scheduled, lambda step: 0.1 * (step + 1))
    stepping.load_state_dict(stepping.state_dict())  # what a resume does to ZeRO's optimizer
    scheduler.step()
    assert stepping.param_groups[0]["lr"] != scheduler.get_last_lr()[0]  # the gap
    trainer = Trainer.__new__(Trainer)
    trainer.model = SimpleNamespace(optimizer=SimpleNamespace(optimizer=stepping))
    trainer.scheduler = scheduler
    trainer._sync_deepspeed_lr()
    assert stepping.param_groups[0]["lr"] == scheduler.get_last_lr()[0] == pytest.approx(0.2)


def test_a_checkpoint_folder_names_its_adapter_not_its_rng_file(short_reference: Path) -> None:
    from train.lora import find_lora_file

    checkpoint = short_reference / "checkpoints" / "checkpoint-000002"
    assert (checkpoint / "trainer_rng_0.safetensors").is_file()
    assert find_lora_file(checkpoint) == checkpoint / "adapter" / "style.safetensors"
