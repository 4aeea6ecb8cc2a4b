"""Experiment tracking through accelerate's trackers (W&B, TensorBoard) plus a local metrics.jsonl.

W&B runs offline unless WANDB_MODE says otherwise (`core` sets the default); the offline run
lands in `<output_dir>/wandb/offline-run-*` and `wandb sync` uploads it later. metrics.jsonl
holds every step's numbers (loss, lr, grad norm, throughput, rho) on the main process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from omegaconf import OmegaConf

from core.io import write_text_atomic
from core.schema import TrainConfig
from train.samples import SampleFiles


def flat_config(cfg: TrainConfig) -> dict[str, Any]:
    """Dotted keys with scalar values (TensorBoard's hparams accept nothing else)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, (int, float, str, bool)):
            out[prefix[:-1]] = node
        else:
            out[prefix[:-1]] = str(node)

    walk(OmegaConf.to_container(OmegaConf.structured(cfg)), "")
    return out


def init_trackers(accelerator: Accelerator, cfg: TrainConfig, run_dir: Path, stage: str) -> None:
    if not cfg.tracking.report_to:
        return
    name = cfg.tracking.run_name or run_dir.name
    init_kwargs = {"wandb": {"dir": str(run_dir), "name": name, "job_type": stage,
                             "mode": os.environ.get("WANDB_MODE", "offline")}}
    accelerator.init_trackers(cfg.tracking.project, config=flat_config(cfg), init_kwargs=init_kwargs)


def end_tracking(accelerator: Accelerator) -> None:
    """Finish the trackers and, for W&B, wait until its service has written the run to disk:
    `run.finish()` can return while the offline run file is still buffered in the service process,
    so a run read (or `wandb sync`ed) right after training could hold no history."""
    uses_wandb = any(t.name == "wandb" for t in accelerator.trackers)
    accelerator.end_training()
    if uses_wandb and accelerator.is_main_process:
        import wandb

        wandb.teardown()


class MetricsLog:
    """Append-only JSON lines, one per step."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def truncate(self, step: int) -> None:
        """Drop records after `step` (a resumed run redoes them; otherwise they would appear twice)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in keep))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")  # closed per line: a SIGKILLed run keeps every logged step


def read_metrics(path: Path) -> dict[int, dict[str, Any]]:
    """step -> the last record logged for it (a resumed run's records replace the killed run's)."""
    records: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["step"]] = record
    return records


def log_samples(accelerator: Accelerator, samples: list[SampleFiles], step: int) -> None:
    """Send validation videos and frames to the trackers that are active."""
    if not samples or not accelerator.trackers:
        return
    import numpy as np
    from PIL import Image

    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            import wandb

            payload = {}
            for sample in samples:
                name = sample.video.stem.removeprefix("sample_")  # <prompt index>_<tokens>
                caption = f"{sample.tokens} tokens: {sample.prompt}"
                payload[f"samples/video_{name}"] = wandb.Video(str(sample.video), caption=caption, format="mp4")
                payload[f"samples/frames_{name}"] = [wandb.Image(str(p), caption=p.stem) for p in sample.frames]
            tracker.log(payload, step=step)
        elif tracker.name == "tensorboard":
            for sample in samples:
                frames = np.stack([np.asarray(Image.open(p)) for p in sample.frames])
                name = sample.video.stem.removeprefix("sample_")
                tracker.writer.add_images(f"samples/frames_{name}", frames, global_step=step, dataformats="NHWC")
            tracker.writer.flush()
