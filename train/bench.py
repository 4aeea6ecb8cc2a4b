"""`make bench-train`: the trainer's step against a bare diffusers + peft loop, same batch, same process.

    python -m train.bench [--json runs/bench/train.json] [--steps 12] [--latent 3x16x32] [--rank 16]
                          [--cat-rounds 6] [--cat-latent 5x48x48] [--skip-cat | --skip-overhead]

Both sides train the same LoRA (cross-attention, as stage 1) on the mid-size random Wan
transformer (`core.models.wan21.MIDSIZE_TRANSFORMER`, big enough that attention dominates as in 14B)
with the same batch. The trainer side is `Trainer.train_batch` + `Trainer.log_step`, exactly
what the loop calls per step (accelerate accumulate/backward/clip, scheduler, throughput
record, metrics.jsonl); the bare side is a plain forward/MSE/backward/clip/AdamW loop. Steps
alternate between the two so machine load affects both alike; the medians are compared.
The CAT section (`train/bench_cat.py`) times the same trainer's step at CAT rho 0.5 and 0.25
against uniform tokens and compares the speedup with the cost model's ideal.
"""

from __future__ import annotations

import argparse
import copy
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import core  # noqa: F401  (offline environment)
from core.io import write_json_atomic
from core.models.wan21 import CROSS_ATTN_TARGETS, MIDSIZE_TRANSFORMER, TEXT_TOKENS, load_components, model_input
from core.schema import (
    LoraSpec,
    ModelConfig,
    OptimConfig,
    TrackingConfig,
    TrainConfig,
    TrainDataConfig,
    ValidationConfig,
)

TARGET_OVERHEAD_PCT = 5.0


class SameWindow(Dataset):
    """A dataset whose every item is the same window (the bench times steps, not data)."""

    def __init__(self, item: dict, length: int):
        self.item, self.length = item, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        return {**self.item, "window_id": f"bench-{index}"}

    def shape_key(self, index: int) -> tuple[int, int, int]:
        return tuple(self.item["latents"].shape[1:])

    def window_ids(self) -> list[str]:
        return [f"bench-{i}" for i in range(self.length)]


def make_window(latent: tuple[int, int, int], text_dim: int, image_dim: int, seed: int = 0) -> dict:
    f, h, w = latent
    g = torch.Generator().manual_seed(seed)
    return {"latents": torch.randn(16, f, h, w, generator=g), "condition": torch.randn(20, f, h, w, generator=g),
            "text_embeds": torch.randn(TEXT_TOKENS, text_dim, generator=g),
            "image_embeds": torch.randn(65, image_dim, generator=g), "complexity": torch.zeros(2, f, h // 2, w // 2),
            "caption": "bench"}


def midsize_transformer(seed: int, device: torch.device, dtype: torch.dtype,
                        config: dict | None = None) -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    model = WanTransformer3DModel(**(config or MIDSIZE_TRANSFORMER)).to(device)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.requires_grad_(False)


class BareLoop:
    """The reference: diffusers + peft and nothing else."""

    def __init__(self, transformer: torch.nn.Module, spec: LoraSpec, lr: float, max_grad_norm: float):
        from peft import LoraConfig

        transformer.add_adapter(LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(CROSS_ATTN_TARGETS)))
        self.params = [p for p in transformer.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()
        self.transformer, self.max_grad_norm = transformer.train(), max_grad_norm
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)

    def step(self, batch: dict, autocast: Any) -> float:
        latents = batch["latents"]
        sigma = torch.rand(latents.shape[0]).to(latents.device)
        noise = torch.randn_like(latents)
        s = sigma.view(-1, 1, 1, 1, 1)
        noisy, target = (1 - s) * latents + s * noise, noise - latents
        dtype = self.transformer.patch_embedding.weight.dtype
        with autocast:
            pred = self.transformer(hidden_states=model_input(noisy, batch["condition"]).to(dtype),
                                    timestep=sigma * 1000, encoder_hidden_states=batch["text_embeds"].to(dtype),
                                    encoder_hidden_states_image=batch["image_embeds"].to(dtype), return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def run(steps: int, warmup: int, latent: tuple[int, int, int], rank: int, out_dir: Path) -> dict[str, Any]:
    from train.loop import run_stage  # noqa: F401  (the same import path users take)
    from train.stage1 import STAGE
    from train.trainer import Trainer

    cuda = torch.cuda.is_available()
    precision = "bf16" if cuda else "no"
    model_cfg = ModelConfig(preset="tiny", device="cuda" if cuda else "cpu")
    comp = load_components(model_cfg)  # tiny encoders; the transformer is swapped for the mid-size one
    device = comp.device
    dtype = torch.bfloat16 if cuda else torch.float32
    comp.transformer = midsize_transformer(0, device, dtype)
    bare_model = copy.deepcopy(comp.transformer)
    spec = LoraSpec(name="style", rank=rank, alpha=float(rank), targets=list(CROSS_ATTN_TARGETS))
    cfg = TrainConfig(
        model=model_cfg, data=TrainDataConfig(prepared_dir=str(out_dir)), lora=spec,
        optim=OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", max_grad_norm=1.0),
        max_steps=10**6, mixed_precision=precision, heldout=False, output_dir=str(out_dir / "trainer"),
        tracking=TrackingConfig(report_to=[]), validation=ValidationConfig(at_end=False),
    )
    window = make_window(latent, MIDSIZE_TRANSFORMER["text_dim"], MIDSIZE_TRANSFORMER["image_dim"])
    trainer = Trainer(cfg, STAGE, components=comp, train_view=SameWindow(window, 4))
    batch = next(iter(trainer.loader))
    bare = BareLoop(bare_model, spec, cfg.optim.lr, cfg.optim.max_grad_norm)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    times: dict[str, list[float]] = {"trainer": [], "bare": []}
    peaks: dict[str, float | None] = {"trainer": None, "bare": None}
    step = 0
    for i in range(warmup + steps):
        for side in ("trainer", "bare") if i % 2 == 0 else ("bare", "trainer"):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            _sync(device)
            t0 = time.perf_counter()
            if side == "trainer":
                step += 1
                trainer.log_step(step, trainer.train_batch(batch))
            else:
                bare.step(batch, autocast)
            _sync(device)
            if i >= warmup:
                times[side].append(time.perf_counter() - t0)
                peak = _peak(device)
                if peak is not None:
                    peaks[side] = max(peaks[side] or 0.0, peak)
    med = {side: statistics.median(values) * 1000 for side, values in times.items()}
    overhead = (med["trainer"] / med["bare"] - 1) * 100
    tokens = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    return {
        "benchmark": "train step: cinelora Trainer vs bare diffusers+peft loop",
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()}, "
                                                                   f"{torch.get_num_threads()} threads)",
        "model": "core.models.wan21.MIDSIZE_TRANSFORMER (random, d=512, 4 layers)", "precision": precision,
        "latent_fhw": list(latent), "tokens": tokens, "lora_rank": rank, "lora_targets": list(CROSS_ATTN_TARGETS),
        "steps_timed": steps, "warmup_steps": warmup,
        "trainer_ms_median": round(med["trainer"], 2), "bare_ms_median": round(med["bare"], 2),
        "trainer_ms_all": [round(t * 1000, 2) for t in times["trainer"]],
        "bare_ms_all": [round(t * 1000, 2) for t in times["bare"]],
        "overhead_pct": round(overhead, 2), "target_overhead_pct": TARGET_OVERHEAD_PCT,
        "meets_target": overhead <= TARGET_OVERHEAD_PCT,
        "peak_gpu_mib": peaks if cuda else None,
        "peak_rss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        ("side", "median ms/step", "peak memory"),
        ("bare diffusers+peft", f"{result['bare_ms_median']:.1f}",
         f"{result['peak_gpu_mib']['bare']:.0f} MiB GPU" if result["peak_gpu_mib"] else "-"),
        ("cinelora Trainer", f"{result['trainer_ms_median']:.1f}",
         f"{result['peak_gpu_mib']['trainer']:.0f} MiB GPU" if result["peak_gpu_mib"] else "-"),
    ]
    lines = [f"| {' | '.join(r)} |" for r in rows]
    lines.insert(1, "|---|---|---|")
    verdict = "meets" if result["meets_target"] else "MISSES"
    lines.append(f"\noverhead {result['overhead_pct']:+.2f}% ({verdict} the <= {TARGET_OVERHEAD_PCT:.0f}% target); "
                 f"{result['tokens']} tokens, {result['device']}, process peak RSS {result['peak_rss_mib_process']} MiB")
    return "\n".join(lines)


def _latent(parser: argparse.ArgumentParser, text: str) -> tuple[int, int, int]:
    try:
        latent = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        latent = ()
    if len(latent) != 3 or latent[1] % 2 or latent[2] % 2:
        parser.error(f"latent '{text}' must be F'xHxW with even H and W, e.g. 3x16x32")
    return latent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the result JSON here")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--latent", default="3x16x32", help="latent frames x height x width (F'xHxW)")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--cat-rounds", type=int, default=6, help="CAT section: timed rounds (each arm once)")
    parser.add_argument("--cat-latent", default="5x48x48", help="CAT section: latent F'xHxW (default 2,880 tokens)")
    parser.add_argument("--skip-cat", action="store_true", help="only the trainer-overhead section")
    parser.add_argument("--skip-overhead", action="store_true", help="only the CAT section")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (1: steadiest on a shared machine; GPU runs ignore it)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    latent, cat_latent = _latent(parser, args.latent), _latent(parser, args.cat_latent)
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        result = {} if args.skip_overhead else run(args.steps, args.warmup, latent, args.rank, Path(tmp))
        if result:
            print(table(result))
        if not args.skip_cat:
            from train.bench_cat import cat_table, run_cat

            result["cat"] = run_cat(args.cat_rounds, 1, cat_latent, args.rank, Path(tmp))
            print(cat_table(result["cat"]))
    if args.json:
        path = write_json_atomic(args.json, result)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    from core.offline import use_offline_defaults

    use_offline_defaults()
    raise SystemExit(main())
