"""The training loop over a built `Trainer`: resume, steps, checkpoints, samples, results.

    python -m train.stage1 / train.stage2 -> run_stage(STAGE, argv) -> fit(Trainer(cfg, STAGE))
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from core.config import parse_cli, to_yaml
from core.io import write_json_atomic
from core.schema import TrainConfig
from train.checkpoint import checkpoint_path, deepspeed_weights_only, read_state
from train.interrupt import StopOnSignal, TrainingInterrupted
from train.runlock import run_lock
from train.tracking import end_tracking, init_trackers
from train.trainer import RESULTS_FILE, StageSpec, Trainer, config_hash


def _resume(trainer: Trainer) -> tuple[int, int, int, dict]:
    """Restore a checkpoint (model, optimizer, scheduler, RNG, noise stream); (step, epoch, batch, results)."""
    acc, source = trainer.accelerator, trainer.resume_from
    if trainer.is_deepspeed:
        with deepspeed_weights_only():
            acc.load_state(str(source), load_module_strict=False)
    else:
        acc.load_state(str(source))
    state = read_state(source)
    if acc.is_main_process:  # steps logged after this checkpoint were lost with the run: they are redone
        trainer.metrics.truncate(state["step"])
    if state.get("config_hash") != config_hash(trainer.cfg):
        acc.print(f"note: resuming {source.name} with a changed config")
    acc.print(f"resumed from {source} at step {state['step']} (epoch {state['epoch']}, batch {state['batch_in_epoch']})")
    return state["step"], state["epoch"], state["batch_in_epoch"], state.get("results", {})


def fit(trainer: Trainer) -> dict[str, Any]:
    """Run (or resume) to `max_steps`; returns the results also written to results.json."""
    cfg, acc = trainer.cfg, trainer.accelerator
    if acc.is_main_process:
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        (trainer.run_dir / "config.yaml").write_text(to_yaml(cfg))
    init_trackers(acc, cfg, trainer.run_dir, trainer.stage.name)
    step, epoch, batch_in_epoch, results = 0, 0, 0, {}
    if trainer.resume_from is not None:
        step, epoch, batch_in_epoch, results = _resume(trainer)
    elif cfg.heldout:
        results["loss_before"] = trainer.heldout(acc.unwrap_model(trainer.model))
        # the model without this stage's LoRA; stage 2: without any LoRA (None where it was skipped: ZeRO-3)
        stage2 = trainer.stage.needs_base_lora
        results["loss_base"] = trainer.loss_base_model if stage2 else results["loss_before"]
        acc.print(f"held-out loss before training: {results['loss_before']:.6f}")

    seen: list[str] = []
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {trainer.stage.name}", unit="step",
               disable=not acc.is_local_main_process)
    last_saved = step if trainer.resume_from is not None else -1
    trainer.start_timing()
    with StopOnSignal() as stop:
        while step < cfg.max_steps:
            loader = acc.skip_first_batches(trainer.loader, batch_in_epoch) if batch_in_epoch else trainer.loader
            loader.set_epoch(epoch)  # accelerate's loaders re-apply their own epoch counter on iter()
            trainer.sampler.set_epoch(epoch)  # ...which does not reach a bucket sampler wrapped for sharding
            for batch in loader:
                batch_in_epoch += 1
                seen += batch["window_id"]
                record = trainer.train_batch(batch)
                if record is None:
                    continue
                step += 1
                trainer.log_step(step, {**record, "epoch": epoch})
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.max_steps:
                    trainer.checkpoint(step, epoch, batch_in_epoch, results)
                    last_saved = step
                if cfg.validation.every and step % cfg.validation.every == 0:
                    trainer.samples(step)
                if step >= cfg.max_steps:
                    break
                signum = stop.requested(acc)
                if signum is not None:
                    if last_saved != step:
                        trainer.checkpoint(step, epoch, batch_in_epoch, results)
                    bar.close()
                    end_tracking(acc)
                    raise TrainingInterrupted(signum, step, str(checkpoint_path(trainer.ckpt_root, step)))
            else:
                epoch, batch_in_epoch = epoch + 1, 0
    bar.close()
    _write_shard_log(trainer, seen)
    if last_saved != step:
        trainer.checkpoint(step, epoch, batch_in_epoch, results)
    if cfg.heldout:
        results["loss_after"] = trainer.heldout(acc.unwrap_model(trainer.model))
    if cfg.validation.at_end:
        trainer.samples(step)
    results = _finish(trainer, results, trainer.ckpt_root / f"checkpoint-{step:06d}", step)
    end_tracking(acc)
    return results


def _write_shard_log(trainer: Trainer, seen: list[str]) -> None:
    """Which windows this rank trained on (the multi-process tests check the split)."""
    rank = trainer.accelerator.process_index
    path = trainer.run_dir / "data_shards" / f"rank{rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": rank, "windows": seen, "train_windows": len(trainer.train_view)}))


def _finish(trainer: Trainer, results: dict, final: Path, step: int) -> dict[str, Any]:
    """Export the final adapter (both formats) and write results.json (main process)."""
    acc, cfg, stage = trainer.accelerator, trainer.cfg, trainer.stage
    out = {"stage": stage.name, "adapter": cfg.lora.name, "steps": step, "tokenization": stage.tokenization,
           "checkpoint": str(final), "distributed_type": str(acc.distributed_type.value),
           "num_processes": acc.num_processes,
           "heldout_windows": len(trainer.val_view) if trainer.val_view is not None else 0,
           "heldout_sigmas": cfg.objective.heldout_sigmas, **results}
    if stage.tokenization == "cat":
        out["eval_rho"] = cfg.tokenization.eval_rho or cfg.tokenization.rho
    if "loss_before" in out and "loss_after" in out:
        out["improvement"] = out["loss_before"] - out["loss_after"]
    if acc.is_main_process:
        from train.export import export_checkpoint

        files = export_checkpoint(final, trainer.run_dir / "lora", "both", dtype=cfg.export.dtype)
        out["lora"] = {fmt: str(path) for fmt, path in files.items()}
        write_json_atomic(trainer.run_dir / RESULTS_FILE, out)
    acc.wait_for_everyone()
    return out


def format_results(results: dict[str, Any]) -> str:
    parts = [f"stage {results['stage']} done after {results['steps']} steps"]
    for key in ("loss_base", "loss_before", "loss_after"):
        if results.get(key) is not None and not math.isnan(results[key]):
            parts.append(f"{key} {results[key]:.6f}")
    if "lora" in results:
        parts.append(f"lora {results['lora'].get('diffusers')}")
    return "; ".join(parts)


def run_stage(stage: StageSpec, argv: list[str] | None = None) -> int:
    """Entry point body shared by train.stage1 and train.stage2."""
    cfg = parse_cli(TrainConfig, argv, default_config=stage.default_config, command=stage.command,
                    unused=stage.refused_keys())
    main_process = int(os.environ.get("RANK", "0")) == 0
    with run_lock(Path(cfg.output_dir).expanduser(), main_process):  # before any model loads
        trainer = Trainer(cfg, stage)
        try:
            results = fit(trainer)
        except TrainingInterrupted as stop:
            if trainer.accelerator.is_main_process:
                print(f"stopped by {signal.Signals(stop.signum).name} at step {stop.step}; checkpoint "
                      f"{stop.checkpoint}; resume with the same command (checkpoint.resume=auto continues from it)",
                      file=sys.stderr, flush=True)
            return stop.exit_code
    if trainer.accelerator.is_main_process:
        print(format_results(results))
    return 0
