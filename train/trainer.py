"""The one training loop both stages use (accelerate: DDP, DeepSpeed ZeRO, mixed precision).

A stage is a `StageSpec` (targets, data view, tokenization); everything else is here: model
and LoRA set-up, the flow-matching step, throughput, checkpoints with exact resume, held-out
loss before and after, validation samples, and the final export.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs
from accelerate.utils import ProjectConfiguration, set_seed
from safetensors.torch import load_file, save_file

from cat.policy import CatPolicy
from core.config import ConfigError, to_yaml
from core.lora_check import check_targets, transformer_layout
from core.memory import check_training, place_transformer, settle_block_swap
from core.models import Components, get_family, load_components
from core.schema import TrainConfig
from train.checkpoint import ADAPTER_DIR, read_state, resume_target, save_checkpoint
from train.data import ensure_prepared, load_windows, make_loader
from train.evaluate import heldout_loss_sum
from train.forward import Denoiser, stage_policy, token_shares
from train.lora import (
    adapter_state_dict,
    add_trainable_adapter,
    check_base_lora,
    load_adapter_weights,
    load_base_lora,
    peft_metadata,
    resolve_targets,
    stage_targets,
    write_lora_file,
)
from train.objective import flow_loss, flow_target, noisy_pair, sample_sigmas, timesteps
from train.tracking import MetricsLog, log_samples

RESULTS_FILE = "results.json"
BASE_ADAPTER = "base"  # stage 2: the frozen stage-1 adapter
RNG_FILE = "trainer_rng_{rank}.safetensors"


def _new_pending() -> dict[str, Any]:
    return {"losses": [], "rhos": [], "tokens": 0, "samples": 0, "coarse": 0.0, "detail": 0.0}


# keys no training stage reads: setting one stops with exit code 2 instead of being ignored
TRAIN_UNUSED_KEYS = {
    "model.cpu_offload": "it is diffusers' inference offload; for training pick a DeepSpeed offload config "
                         "(configs/accelerate/deepspeed_zero3_offload.yaml)",
}


@dataclass(frozen=True)
class StageSpec:
    """What makes a stage: the layers it adapts, the windows it sees, how tokens are made."""

    name: str  # style | motion: recorded in exports
    command: str  # train.stage1 | train.stage2 (named in errors)
    default_config: str
    target_presets: tuple[str, ...]  # the family's LoRA target presets (model.family decides the layer names)
    keyframes: str  # default data view: include | exclude | only (single-frame windows); data.keyframes overrides
    tokenization: str  # stock | cat
    needs_base_lora: bool  # stage 2 starts from the stage-1 LoRA
    unused_keys: tuple[tuple[str, str], ...] = ()  # (key, why) this stage never reads, besides TRAIN_UNUSED_KEYS

    def refused_keys(self) -> dict[str, str]:
        """Every key this stage refuses, with the reason (passed to `parse_cli`)."""
        return {**TRAIN_UNUSED_KEYS, **dict(self.unused_keys)}


def config_hash(cfg: TrainConfig) -> str:
    return hashlib.sha256(to_yaml(cfg).encode()).hexdigest()[:16]


def make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """gloo for multi-process CPU runs: without it accelerate+DeepSpeed ranks each believe they are alone
    (a single process must not get it: accelerate would then expect a process group that nobody starts).

    `model.device`: auto (accelerate places each rank) or cpu (train on the CPU even with a GPU present);
    a GPU index is refused: which GPUs a run uses is the launcher's choice (CUDA_VISIBLE_DEVICES)."""
    if cfg.model.device not in ("auto", "cpu"):
        raise ConfigError(f"model.device={cfg.model.device} is not available for training; use auto or cpu "
                          "(choose GPUs with CUDA_VISIBLE_DEVICES / accelerate launch --gpu_ids)")
    on_cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if multi_process and on_cpu else []
    return Accelerator(
        cpu=cfg.model.device == "cpu",
        gradient_accumulation_steps=cfg.grad_accum,
        mixed_precision=cfg.mixed_precision,
        log_with=list(cfg.tracking.report_to) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard")),
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
        kwargs_handlers=handlers,
    )


class Trainer:
    """Builds everything from a TrainConfig; `fit()` runs (or resumes) and returns the results dict."""

    def __init__(self, cfg: TrainConfig, stage: StageSpec, components: Components | None = None,
                 train_view: Any = None, val_view: Any = None):
        """`components`/`train_view`/`val_view` replace loading from cfg (benchmarks, tests)."""
        if stage.needs_base_lora and not cfg.base_lora:
            raise ConfigError(f"stage '{stage.name}' needs base_lora=PATH (the stage-1 run folder or LoRA file)")
        if cfg.lora.name == BASE_ADAPTER:
            raise ConfigError(f"lora.name '{BASE_ADAPTER}' is reserved for stage 2's frozen stage-1 adapter")
        self.cfg, self.stage = cfg, stage
        self.policy = stage_policy(stage.tokenization, cfg.tokenization.rho)  # training tokens (rho drawn per step)
        self.eval_policy = stage_policy(stage.tokenization, cfg.tokenization.eval_rho or cfg.tokenization.rho)
        self.run_dir = Path(cfg.output_dir).expanduser()
        self.ckpt_root = self.run_dir / "checkpoints"
        self.accelerator = acc = make_accelerator(cfg, self.run_dir)
        if cfg.cpu_threads and acc.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        self.is_deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.is_zero3 = self.is_deepspeed and acc.state.deepspeed_plugin.zero_stage == 3
        check_training(cfg.model.blocks_to_swap, cfg.model.base_dtype, cfg.gradient_checkpointing,
                       acc.num_processes, self.is_deepspeed, cfg.base_lora_mode)
        self.noise_rng = torch.Generator().manual_seed(cfg.seed * 7919 + acc.process_index)
        self.resume_from = resume_target(cfg.checkpoint.resume, self.ckpt_root, log=acc.print)
        if self.resume_from is not None and read_state(self.resume_from).get("stage") != stage.name:
            raise ConfigError(f"output_dir '{self.run_dir}' holds checkpoints of stage "
                              f"'{read_state(self.resume_from).get('stage')}', not '{stage.name}'; give each stage "
                              "its own output_dir (or checkpoint.resume=never)")

        # LoRA targets and the base LoRA are checked against the model's layout before any weights load
        family = get_family(cfg.model.family)  # the configured family names the layers
        self.targets = stage_targets(cfg.lora, stage.target_presets, family)
        if components is None:
            check_targets(self.targets, transformer_layout(cfg.model), family.original_keys)
        if stage.needs_base_lora:
            check_base_lora(cfg.base_lora, cfg.model)
        for i, image in enumerate(cfg.validation.images):
            if not Path(image).expanduser().is_file():
                raise ConfigError(f"validation.images[{i}] '{image}' not found; pass PNG/JPEG files (or [] for "
                                  "built-in synthetic frames)")
        if train_view is None:
            with acc.main_process_first():
                ensure_prepared(cfg.data, cfg.model)
        if components is None:
            model_cfg = copy.deepcopy(cfg.model)
            model_cfg.device = "cpu"  # then one model at a time onto the GPU: UMT5-XXL and 14B never share it
            with self._whole_weights():
                components = load_components(model_cfg)
        comp = components
        self.family = comp.family
        self.model_id = comp.model_id
        keyframes = cfg.data.keyframes or stage.keyframes
        self.train_view = train_view if train_view is not None else load_windows(
            cfg.data, comp.model_id, "train", keyframes, comp.family.geometry)
        self.val_view = val_view
        if cfg.heldout and val_view is None:
            self.val_view = load_windows(cfg.data, comp.model_id, "val", keyframes, comp.family.geometry)
        wants_samples = cfg.validation.every > 0 or cfg.validation.at_end
        self.renderer = None
        if wants_samples and (acc.is_main_process or self.is_zero3):
            from train.samples import SampleRenderer

            self.renderer = SampleRenderer(comp, cfg.validation, acc.device, self.eval_policy)
        comp.text_encoder = None  # prompts are cached: free UMT5 before training

        transformer = comp.transformer
        if not self.is_zero3:  # ZeRO-3 partitions it from host memory at prepare
            place_transformer(transformer, acc.device, cfg.model.blocks_to_swap)  # swapped blocks stay on the host
        self.base_lora_file = None
        self.loss_base_model = None
        if stage.needs_base_lora:
            if self.resume_from is None and cfg.heldout and not self.is_zero3:  # untouched base model, for the report
                self.loss_base_model = self.heldout(Denoiser(transformer, self.policy))
            self.base_lora_file = load_base_lora(transformer, cfg.base_lora, BASE_ADAPTER, cfg.base_lora_mode)
        self.targets = resolve_targets(transformer, cfg.lora, stage.target_presets, self.family)
        torch.manual_seed(cfg.seed)  # LoRA init: same on every rank, whatever ran before (e.g. building the data)
        params = add_trainable_adapter(transformer, cfg.lora, self.targets)
        set_seed(cfg.seed, device_specific=True)  # per-rank stream for dropout
        for param in params:  # LoRA weights train in fp32 even on a bf16/fp16 base
            param.data = param.data.float()
        settle_block_swap(transformer)
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
            Denoiser(transformer, self.policy), optimizer, loader, scheduler
        )
        acc.register_save_state_pre_hook(self._save_hook)
        acc.register_load_state_pre_hook(self._load_hook)
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", acc.is_main_process)
        self._pending, self._step_end = _new_pending(), time.perf_counter()

    def start_timing(self) -> None:
        """Step times count from here (not from set-up)."""
        self._step_end = time.perf_counter()

    # ------------------------------------------------------------------ set-up helpers
    @contextlib.contextmanager
    def _whole_weights(self) -> Iterator[None]:
        """Load every model unpartitioned: under a ZeRO-3 config transformers would otherwise build the
        text/image encoders already sharded (they only run outside DeepSpeed); ZeRO-3 partitions the
        transformer itself at `prepare`."""
        if not self.is_zero3:
            yield
            return
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            self.accelerator.state.deepspeed_plugin.set_deepspeed_weakref()

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
            "cinelora.base_model": self.model_id, "cinelora.family": self.family.name,
            "cinelora.config_hash": config_hash(c),
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
        if isinstance(self.policy, CatPolicy):  # this step's keep ratio (read each step: benchmarks change it)
            lo, hi = cfg.tokenization.rho_range or (cfg.tokenization.rho, cfg.tokenization.rho)
            rho = lo + (hi - lo) * float(torch.rand(1, generator=self.noise_rng))
        if self.is_deepspeed:
            self._sync_deepspeed_lr()
        noisy, _ = noisy_pair(latents, noise, sigmas)
        condition = batch["condition"]
        timestep = self.family.timestep_input(timesteps(sigmas).to(latents.device), condition, noisy)
        pred = self.model(self.family.model_input(noisy, condition), timestep,
                          batch["text_embeds"], batch["image_embeds"], complexity=batch.get("complexity"), rho=rho)
        target = flow_target(noisy, latents, noise, sigmas, self.accelerator.unwrap_model(self.model).last_layout)
        loss = flow_loss(self.family.loss_region(pred), self.family.loss_region(target))
        self.accelerator.backward(loss)
        return loss.detach(), rho

    def _sync_deepspeed_lr(self) -> None:
        """Give the optimizer DeepSpeed steps (inside `backward`) the scheduler's current rate.

        Under ZeRO-3 + CPU offload the scheduler's optimizer and the one ZeRO steps are two DeepSpeedCPUAdam
        objects that share their param-group dicts, so rate updates reach the stepping one. A resume loads
        the ZeRO optimizer state, which replaces the stepping optimizer's param groups with new dicts: from
        then on it kept the checkpoint's rate (measured: 0.0012 at steps 4 and 5 instead of 0.0012, 0.0016)
        and the adapter ended up to 4e-4 away from the uninterrupted run's. Setting the rate before each
        micro-step restores the link; for an uninterrupted run it writes the value already there."""
        stepping = getattr(getattr(self.model, "optimizer", None), "optimizer", None)
        if stepping is None:
            return
        for group, lr in zip(stepping.param_groups, self.scheduler.get_last_lr(), strict=False):
            group["lr"] = lr

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

    def train_batch(self, batch: dict) -> dict[str, Any] | None:
        """One micro-batch; after the last one of an optimizer step, that step's metrics (else None).

        Step time runs from the end of the previous step, so data loading and the loop's own
        bookkeeping count against throughput.
        """
        acc = self.accelerator
        with acc.accumulate(self.model):
            loss, rho = self.micro_step(batch)
            grad_norm = self.optimizer_step()
        pending = self._pending
        pending["losses"].append(loss)
        pending["rhos"].append(rho)
        size = batch["latents"].shape[0]
        denoiser = acc.unwrap_model(self.model)
        pending["tokens"] += denoiser.last_tokens * size
        coarse, detail = token_shares(denoiser.last_allocation)
        pending["coarse"] += coarse * size
        pending["detail"] += detail * size
        pending["samples"] += size
        if not acc.sync_gradients:
            return None
        now = time.perf_counter()
        dt, self._step_end = now - self._step_end, now
        record = {
            "loss": float(acc.reduce(torch.stack(pending["losses"]).mean(), reduction="mean")), "lr": self.step_lr,
            "grad_norm": grad_norm, "samples_per_s": pending["samples"] * acc.num_processes / dt,
            "tokens_per_s": pending["tokens"] * acc.num_processes / dt, "step_time_s": dt,
        }
        if pending["rhos"][0] is not None:
            record["rho"] = sum(pending["rhos"]) / len(pending["rhos"])
            # shares of this rank's tokens: coarse ones, and those restoring the reference's detail
            record["coarse_share"] = pending["coarse"] / pending["samples"]
            record["detail_share"] = pending["detail"] / pending["samples"]
        self._pending = _new_pending()
        return record

    def log_step(self, step: int, record: dict[str, Any]) -> None:
        """metrics.jsonl every step, the trackers every `log_every` steps."""
        record = {"step": step, **record}
        self.metrics.write(record)
        if step % self.cfg.tracking.log_every == 0 or step == self.cfg.max_steps:
            self.accelerator.log({k: v for k, v in record.items() if v is not None and k != "step"}, step=step)

    # ------------------------------------------------------------------ evaluation and samples
    def heldout(self, denoiser: Denoiser) -> float:
        """Held-out loss of this stage (its tokenization, eval rho), each rank scoring its share.

        Under ZeRO-3 every forward gathers parameters collectively, so every rank scores every
        window (an uneven share would leave one rank waiting forever)."""
        acc = self.accelerator
        rho = getattr(self.eval_policy, "rho", None)
        rank, world = (0, 1) if self.is_zero3 else (acc.process_index, acc.num_processes)
        with acc.autocast():
            total, count = heldout_loss_sum(denoiser, self.val_view, self.cfg.objective, rho=rho, seed=self.cfg.seed,
                                            rank=rank, world=world, family=self.family)
        if world == 1:
            return total / max(count, 1)
        summed = acc.reduce(torch.tensor([total, float(count)], device=acc.device), reduction="sum")
        return float(summed[0] / summed[1].clamp(min=1))

    def samples(self, step: int) -> None:
        if self.renderer is None:
            return
        # under ZeRO-3 every rank runs the sampler (parameters are gathered collectively); one writes
        samples = self.renderer.render(self.transformer, self.run_dir / "samples" / f"step-{step:06d}",
                                       write=self.accelerator.is_main_process)
        if self.accelerator.is_main_process:
            log_samples(self.accelerator, samples, step)

    def checkpoint(self, step: int, epoch: int, batch_in_epoch: int, results: dict) -> None:
        state = {"step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "stage": self.stage.name,
                 "adapter": self.cfg.lora.name, "config_hash": config_hash(self.cfg), "results": results,
                 "world_size": self.accelerator.num_processes, "model_id": self.model_id,
                 "base_lora": str(self.base_lora_file) if self.base_lora_file else None}
        kwargs = {"exclude_frozen_parameters": True} if self.is_deepspeed else {}
        save_checkpoint(self.accelerator, self.ckpt_root, step, state, self.cfg.checkpoint.keep_last, **kwargs)
