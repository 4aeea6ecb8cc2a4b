"""The one training loop both stages use (accelerate: DDP, DeepSpeed ZeRO, mixed precision).

A stage is a `StageSpec` (targets, data view, tokenization); everything else is here: model
and LoRA set-up, the flow-matching step, throughput, checkpoints with exact resume, held-out
loss before and after, validation samples, and the final export.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from core.config import ConfigError, to_yaml
from core.schema import TrainConfig
from core.wan import load_components, model_input
from train.checkpoint import ADAPTER_DIR, deepspeed_weights_only, read_state, resume_target, save_checkpoint
from train.data import ensure_prepared, load_windows, make_loader
from train.evaluate import heldout_loss_sum
from train.forward import Denoiser
from train.lora import (
    adapter_state_dict,
    add_trainable_adapter,
    load_adapter_weights,
    load_base_lora,
    peft_metadata,
    resolve_targets,
    write_lora_file,
)
from train.objective import flow_loss, noisy_pair, sample_sigmas, timesteps
from train.tracking import MetricsLog, init_trackers, log_samples

RESULTS_FILE = "results.json"
RNG_FILE = "trainer_rng_{rank}.safetensors"


@dataclass(frozen=True)
class StageSpec:
    """What makes a stage: the layers it adapts, the windows it sees, how tokens are made."""

    name: str  # style | motion: recorded in exports
    default_config: str
    default_targets: tuple[str, ...]
    keyframes: str  # data view: include | exclude | only (single-frame windows)
    tokenization: str  # stock | cat
    needs_base_lora: bool  # stage 2 starts from the stage-1 LoRA


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """gloo for multi-process CPU runs: without it accelerate+DeepSpeed ranks each believe they are alone
    (a single process must not get it: accelerate would then expect a process group that nobody starts)."""
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if multi_process and not torch.cuda.is_available() else []
    return Accelerator(
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with=list(cfg.tracking.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        kwargs_handlers=handlers,
    )


class Trainer:
    """Builds everything from a TrainConfig; `fit()` runs (or resumes) and returns the results dict."""

    def __init__(self, cfg: TrainConfig, stage: StageSpec):
        if stage.needs_base_lora and not cfg.base_lora:
            raise ConfigError(f"stage '{stage.name}' needs base_lora=PATH (the stage-1 run folder or LoRA file)")
        self.cfg, self.stage = cfg, stage
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.ckpt_root = self.run_dir / "checkpoints"
        self.accelerator = acc = make_accelerator(cfg, self.run_dir)
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.is_zero3 = self.is_deepspeed and acc.state.deepspeed_plugin.zero_stage == 3
        set_seed(cfg.seed, device_specific=True)
        self.noise_rng = torch.Generator().manual_seed(cfg.seed * 7919 + acc.process_index)
        self.resume_from = resume_target(cfg.checkpoint.resume, self.ckpt_root)

        with acc.main_process_first():
            ensure_prepared(cfg.data, cfg.model)
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.device = "cpu" if self.is_zero3 else str(acc.device)
        comp = load_components(model_cfg)
        self.model_id = comp.model_id
        self.train_view = load_windows(cfg.data, comp.model_id, "train", stage.keyframes)
        self.val_view = load_windows(cfg.data, comp.model_id, "val", stage.keyframes) if cfg.heldout else None
        wants_samples = cfg.validation.every > 0 or cfg.validation.at_end
        self.renderer = None
        if wants_samples and (acc.is_main_process or self.is_zero3):
            from train.samples import SampleRenderer

            self.renderer = SampleRenderer(comp, cfg.validation)
        comp.text_encoder = None  # prompts are cached: free UMT5 before training

        transformer = comp.transformer
        self.base_lora_file = None
        self.loss_base_model = None
        if stage.needs_base_lora:
            if self.resume_from is None and cfg.heldout:  # the untouched base model, for the report
                self.loss_base_model = self._heldout(Denoiser(transformer, stage.tokenization))
            self.base_lora_file = load_base_lora(transformer, cfg.base_lora, "style", cfg.base_lora_mode)
        self.targets = resolve_targets(transformer, cfg.lora, stage.default_targets)
        params = add_trainable_adapter(transformer, cfg.lora, self.targets)
        for param in params:  # LoRA weights train in fp32 even on a bf16/fp16 base
            param.data = param.data.float()
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        self.transformer = transformer
        self.trainable = params

        optimizer = self._optimizer(params)
        scheduler = self._scheduler(optimizer)
        loader, self.sampler = make_loader(self.train_view, cfg.data, cfg.seed)
        if self.is_deepspeed:
            ds_config = acc.state.deepspeed_plugin.deepspeed_config  # fill "auto" from our config
            for key, value in (("gradient_clipping", cfg.optim.max_grad_norm),
                               ("train_micro_batch_size_per_gpu", cfg.data.batch_size)):
                if ds_config.get(key, "auto") == "auto":
                    ds_config[key] = value
        self.model, self.optimizer, self.loader, self.scheduler = acc.prepare(
            Denoiser(transformer, stage.tokenization), optimizer, loader, scheduler
        )
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", acc.is_main_process)

    # ------------------------------------------------------------------ set-up helpers
    def _optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        o = self.cfg.optim
        offload = self.is_deepspeed and (self.accelerator.state.deepspeed_plugin.deepspeed_config
                                         .get("zero_optimization", {}).get("offload_optimizer", {})
                                         .get("device", "none") == "cpu")
        if offload:  # DeepSpeed's CPU Adam is the optimizer that runs well on offloaded states
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            return DeepSpeedCPUAdam(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)
        return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)

    def _scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Warmup then cosine/constant; counted in accelerate's per-process scheduler steps."""
        from diffusers.optimization import get_scheduler

        n = self.accelerator.num_processes
        name = "cosine" if self.cfg.optim.schedule == "cosine" else "constant_with_warmup"
        return get_scheduler(name, optimizer, num_warmup_steps=self.cfg.optim.warmup_steps * n,
                             num_training_steps=self.cfg.max_steps * n)

    # ------------------------------------------------------------------ checkpoint hooks
    def _adapter_state(self) -> dict[str, torch.Tensor]:
        if self.is_zero3:  # parameters are partitioned: gather just the LoRA ones (every rank calls this)
            import deepspeed

            with deepspeed.zero.GatheredParameters(self.trainable, modifier_rank=None):
                return adapter_state_dict(self.transformer, self.cfg.lora.name)
        return adapter_state_dict(self.transformer, self.cfg.lora.name)

    def _save_hook(self, models: list, weights: list, output_dir: str) -> None:
        """Save only the adapter (in export format) instead of the whole transformer."""
        state = self._adapter_state()
        if self.accelerator.is_main_process:
            write_lora_file(Path(output_dir) / ADAPTER_DIR / f"{self.cfg.lora.name}.safetensors", state,
                            peft_metadata(self.transformer, self.cfg.lora.name), self.export_metadata())
        weights.clear()  # accelerate would otherwise write the full (frozen) model too
        rank = self.accelerator.process_index
        save_file({"noise": self.noise_rng.get_state()}, str(Path(output_dir) / RNG_FILE.format(rank=rank)))

    def _load_hook(self, models: list, input_dir: str) -> None:
        models.clear()  # the adapter is loaded here, the frozen base came from its own folder
        file = Path(input_dir) / ADAPTER_DIR / f"{self.cfg.lora.name}.safetensors"
        if not self.is_deepspeed:
            load_adapter_weights(self.transformer, self.cfg.lora.name, load_file(str(file)))
        rng = load_file(str(Path(input_dir) / RNG_FILE.format(rank=self.accelerator.process_index)))
        self.noise_rng.set_state(rng["noise"])

    def export_metadata(self) -> dict[str, str]:
        """String fields stored in every exported file next to diffusers' adapter metadata."""
        c = self.cfg
        return {
            "cinelora.stage": self.stage.name, "cinelora.adapter": c.lora.name, "cinelora.rank": str(c.lora.rank),
            "cinelora.alpha": str(c.lora.alpha), "cinelora.target_modules": json.dumps(self.targets),
            "cinelora.base_model": self.model_id, "cinelora.config_hash": config_hash(c),
            "cinelora.tokenization": self.stage.tokenization,
            "cinelora.base_lora": str(self.base_lora_file) if self.base_lora_file else "",
        }

    # ------------------------------------------------------------------ one step
    def micro_step(self, batch: dict) -> tuple[torch.Tensor, float | None]:
        """Forward + backward of one micro-batch; returns (loss, rho used)."""
        cfg = self.cfg
        latents = batch["latents"]
        sigmas = sample_sigmas(cfg.objective, latents.shape[0], self.noise_rng)
        noise = torch.randn(latents.shape, generator=self.noise_rng).to(latents.device, latents.dtype)
        rho = None
        if self.stage.tokenization == "cat":
            lo, hi = cfg.tokenization.rho_range or (cfg.tokenization.rho, cfg.tokenization.rho)
            rho = lo + (hi - lo) * float(torch.rand(1, generator=self.noise_rng))
        noisy, target = noisy_pair(latents, noise, sigmas)
        pred = self.model(model_input(noisy, batch["condition"]), timesteps(sigmas).to(latents.device),
                          batch["text_embeds"], batch["image_embeds"], complexity=batch.get("complexity"), rho=rho)
        loss = flow_loss(pred, target)
        self.accelerator.backward(loss)
        return loss.detach(), rho

    def optimizer_step(self) -> float | None:
        """Clip, step, schedule, zero; returns the pre-clip gradient norm (None on accumulation steps)."""
        acc = self.accelerator
        grad_norm = None
        self.step_lr = self.scheduler.get_last_lr()[0]  # the rate this step uses
        if acc.sync_gradients and not self.is_deepspeed and self.cfg.optim.max_grad_norm > 0:
            grad_norm = float(acc.clip_grad_norm_(self.trainable, self.cfg.optim.max_grad_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.is_deepspeed and acc.sync_gradients:
            norm = self.model.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else None
        return grad_norm

    # ------------------------------------------------------------------ evaluation and samples
    def _heldout(self, denoiser: Denoiser) -> float:
        acc = self.accelerator
        rho = None
        if self.stage.tokenization == "cat":
            rho = self.cfg.tokenization.eval_rho or self.cfg.tokenization.rho
        with acc.autocast():
            total, count = heldout_loss_sum(denoiser, self.val_view, self.cfg.objective, rho=rho, seed=self.cfg.seed,
                                            rank=acc.process_index, world=acc.num_processes)
        summed = acc.reduce(torch.tensor([total, float(count)], device=acc.device), reduction="sum")
        return float(summed[0] / summed[1].clamp(min=1))

    def _samples(self, step: int) -> None:
        if self.renderer is None:
            return
        samples = self.renderer.render(self.transformer, self.run_dir / "samples" / f"step-{step:06d}")
        if self.accelerator.is_main_process:
            log_samples(self.accelerator, samples, step)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        init_trackers(acc, cfg, self.run_dir, self.stage.name)
        step, epoch, batch_in_epoch, results = 0, 0, 0, {}
        if self.resume_from is not None:
            if self.is_deepspeed:
                with deepspeed_weights_only():
                    acc.load_state(str(self.resume_from), load_module_strict=False)
            else:
                acc.load_state(str(self.resume_from))
            state = read_state(self.resume_from)
            step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
            results = state.get("results", {})
            if state.get("config_hash") != config_hash(cfg) and acc.is_main_process:
                print(f"note: resuming {self.resume_from.name} with a changed config")
            acc.print(f"resumed from {self.resume_from} at step {step} (epoch {epoch}, batch {batch_in_epoch})")
        elif cfg.heldout:
            results["loss_before"] = self._heldout(self.model if not self.is_deepspeed else acc.unwrap_model(self.model))
            results["loss_base"] = self.loss_base_model if self.loss_base_model is not None else results["loss_before"]
            acc.print(f"held-out loss before training: {results['loss_before']:.6f}")

        seen: list[str] = []
        window_ids = self.train_view.window_ids()
        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train {self.stage.name}", unit="step",
                   disable=not acc.is_local_main_process)
        last_saved = step if self.resume_from is not None else -1
        while step < cfg.max_steps:
            loader = acc.skip_first_batches(self.loader, batch_in_epoch) if batch_in_epoch else self.loader
            loader.set_epoch(epoch)  # accelerate's loaders re-apply their own epoch counter on iter()
            self.sampler.set_epoch(epoch)  # ...which does not reach a bucket sampler wrapped for sharding
            t0, losses, rhos, tokens, micro = time.perf_counter(), [], [], [], 0
            for batch in loader:
                batch_in_epoch += 1
                seen += batch["window_id"]
                with acc.accumulate(self.model):
                    loss, rho = self.micro_step(batch)
                    grad_norm = self.optimizer_step()
                losses.append(loss)
                rhos.append(rho)
                tokens.append(acc.unwrap_model(self.model).last_tokens * batch["latents"].shape[0])
                micro += batch["latents"].shape[0]
                if not acc.sync_gradients:
                    continue
                step += 1
                dt = time.perf_counter() - t0
                mean_loss = float(acc.reduce(torch.stack(losses).mean(), reduction="mean"))
                record = {
                    "step": step, "loss": mean_loss, "lr": self.step_lr, "grad_norm": grad_norm,
                    "samples_per_s": micro * acc.num_processes / dt,
                    "tokens_per_s": sum(tokens) * acc.num_processes / dt, "step_time_s": dt, "epoch": epoch,
                }
                if rhos[0] is not None:
                    record["rho"] = sum(rhos) / len(rhos)
                self.metrics.write(record)
                if step % cfg.tracking.log_every == 0 or step == cfg.max_steps:
                    acc.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                if cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < cfg.max_steps:
                    self._checkpoint(step, epoch, batch_in_epoch, results)
                    last_saved = step
                if cfg.validation.every and step % cfg.validation.every == 0:
                    self._samples(step)
                if step >= cfg.max_steps:
                    break
                t0, losses, rhos, tokens, micro = time.perf_counter(), [], [], [], 0
            else:
                epoch, batch_in_epoch = epoch + 1, 0
        bar.close()
        self._write_shard_log(seen, window_ids)
        if last_saved != step:
            self._checkpoint(step, epoch, batch_in_epoch, results)
        final = self.ckpt_root / f"checkpoint-{step:06d}"
        if cfg.heldout:
            results["loss_after"] = self._heldout(acc.unwrap_model(self.model))
        if cfg.validation.at_end:
            self._samples(step)
        results = self._finish(results, final, step)
        acc.end_training()
        return results

    def _checkpoint(self, step: int, epoch: int, batch_in_epoch: int, results: dict) -> None:
        state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "stage": self.stage.name,
                 "adapter": self.cfg.lora.name, "config_hash": config_hash(self.cfg), "results": results,
                 "world_size": self.accelerator.num_processes, "model_id": self.model_id,
                 "base_lora": str(self.base_lora_file) if self.base_lora_file else None}
        kwargs = {"exclude_frozen_parameters": True} if self.is_deepspeed else {}
        save_checkpoint(self.accelerator, self.ckpt_root, step, state, self.cfg.checkpoint.keep_last, **kwargs)

    def _write_shard_log(self, seen: list[str], all_ids: list[str]) -> None:
        """Which windows this rank trained on (checked by the multi-process tests)."""
        path = self.run_dir / "data_shards" / f"rank{self.accelerator.process_index}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"rank": self.accelerator.process_index, "windows": seen,
                                    "train_windows": len(all_ids)}))

    def _finish(self, results: dict, final: Path, step: int) -> dict[str, Any]:
        acc = self.accelerator
        out = {"stage": self.stage.name, "adapter": self.cfg.lora.name, "steps": step,
               "tokenization": self.stage.tokenization, "checkpoint": str(final),
               "distributed_type": str(acc.distributed_type.value), "num_processes": acc.num_processes,
               "heldout_windows": len(self.val_view) if self.val_view is not None else 0,
               "heldout_sigmas": self.cfg.objective.heldout_sigmas, **results}
        if self.stage.tokenization == "cat":
            out["eval_rho"] = self.cfg.tokenization.eval_rho or self.cfg.tokenization.rho
        if "loss_before" in out and "loss_after" in out:
            out["improvement"] = out["loss_before"] - out["loss_after"]
        if acc.is_main_process:
            from train.export import export_checkpoint

            files = export_checkpoint(final, self.run_dir / "lora", "both")
            out["lora"] = {fmt: str(path) for fmt, path in files.items()}
            tmp = self.run_dir / f".{RESULTS_FILE}.tmp"
            tmp.write_text(json.dumps(out, indent=2))
            tmp.replace(self.run_dir / RESULTS_FILE)
        acc.wait_for_everyone()
        return out


def format_results(results: dict[str, Any]) -> str:
    parts = [f"stage {results['stage']} done after {results['steps']} steps"]
    for key in ("loss_base", "loss_before", "loss_after"):
        if key in results and results[key] is not None and not math.isnan(results[key]):
            parts.append(f"{key} {results[key]:.6f}")
    if "lora" in results:
        parts.append(f"lora {results['lora'].get('diffusers')}")
    return "; ".join(parts)


def run_stage(stage: StageSpec, argv: list[str] | None = None) -> int:
    """Entry point body shared by train.stage1 and train.stage2."""
    from core.config import parse_cli

    cfg = parse_cli(TrainConfig, argv, default_config=stage.default_config)
    trainer = Trainer(cfg, stage)
    results = trainer.fit()
    if trainer.accelerator.is_main_process:
        print(format_results(results))
    return 0
