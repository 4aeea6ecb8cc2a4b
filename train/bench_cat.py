"""The CAT section of `make bench-train`: the trainer's step through CAT tokens vs the same trainer with uniform tokens.

One stage-2 style Trainer (LoRA on self-attention + FFN, CAT tokenization) on the mid-size random
Wan transformer; its step (`Trainer.train_batch` + `log_step`, as the loop calls it) runs at
rho 1.0 (the stock patchify path: uniform tokens) and at each CAT rho, the allocation made from
the window's complexity maps inside the step as in training. Rounds rotate the order of the arms;
the speedup at a rho is the median over rounds of t(uniform) / t(rho) from the same round, so load
that drifts over seconds hits both sides of a pair alike. Ideal = `cat.cost.ideal_speedup`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from cat.cost import ideal_speedup, model_dims
from core.models.wan21 import FFN_TARGETS, MIDSIZE_TRANSFORMER, SELF_ATTN_TARGETS, TEXT_TOKENS, load_components
from core.schema import (
    LoraSpec,
    ModelConfig,
    OptimConfig,
    TokenizationConfig,
    TrackingConfig,
    TrainConfig,
    TrainDataConfig,
    ValidationConfig,
)

CAT_RHOS = (0.5, 0.25)
TARGET_OF_IDEAL = 0.85
IMAGE_CONTEXT = 65  # the bench window's image tokens (tiny CLIP)


def cat_window(latent: tuple[int, int, int], text_dim: int, image_dim: int, seed: int = 0) -> dict:
    """A cached-window dict with random complexity maps (spatial 0..100, temporal 0..50 per cell)."""
    from train.bench import make_window

    window = make_window(latent, text_dim, image_dim, seed)
    f, h, w = latent
    g = torch.Generator().manual_seed(seed + 1)
    window["complexity"] = torch.stack(
        [torch.rand(f, h // 2, w // 2, generator=g) * 100, torch.rand(f, h // 2, w // 2, generator=g) * 50]
    )
    return window


def run_cat(
    rounds: int,
    warmup: int,
    latent: tuple[int, int, int],
    rank: int,
    out_dir: Path,
    transformer_config: dict | None = None,
) -> dict[str, Any]:
    """Per-rho step times (ms, medians), paired speedups against uniform tokens, the ideal and their ratio."""
    from train.bench import SameWindow, midsize_transformer
    from train.stage2 import STAGE
    from train.trainer import Trainer

    config = transformer_config or MIDSIZE_TRANSFORMER
    cuda = torch.cuda.is_available()
    model_cfg = ModelConfig(preset="tiny", device="cuda" if cuda else "cpu")
    comp = load_components(model_cfg)  # tiny encoders; the transformer is swapped for the mid-size one
    comp.transformer = midsize_transformer(0, comp.device, torch.bfloat16 if cuda else torch.float32, config)
    stage = dataclasses.replace(STAGE, needs_base_lora=False)  # the timing needs no stage-1 LoRA underneath
    spec = LoraSpec(name="motion", rank=rank, alpha=float(rank), targets=list(SELF_ATTN_TARGETS + FFN_TARGETS))
    cfg = TrainConfig(
        model=model_cfg,
        data=TrainDataConfig(prepared_dir=str(out_dir)),
        lora=spec,
        tokenization=TokenizationConfig(rho=1.0),
        optim=OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant", max_grad_norm=1.0),
        max_steps=10**6,
        mixed_precision="bf16" if cuda else "no",
        heldout=False,
        output_dir=str(out_dir / "trainer-cat"),
        tracking=TrackingConfig(report_to=[]),
        validation=ValidationConfig(at_end=False),
    )
    window = cat_window(latent, config["text_dim"], config["image_dim"])
    trainer = Trainer(cfg, stage, components=comp, train_view=SameWindow(window, 4))
    batch = next(iter(trainer.loader))
    arms = (1.0, *CAT_RHOS)
    times: dict[float, list[float]] = {rho: [] for rho in arms}
    tokens: dict[float, int] = {}
    ratios: dict[float, list[float]] = {rho: [] for rho in CAT_RHOS}
    step = 0
    for r in range(warmup + rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        this_round: dict[float, float] = {}
        for rho in order:
            trainer.cfg.tokenization.rho = rho
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step += 1
            trainer.log_step(step, trainer.train_batch(batch))
            if cuda:
                torch.cuda.synchronize()
            this_round[rho] = time.perf_counter() - start
            tokens[rho] = trainer.accelerator.unwrap_model(trainer.model).last_tokens
        if r >= warmup:
            for rho in arms:
                times[rho].append(this_round[rho])
            for rho in CAT_RHOS:
                ratios[rho].append(this_round[1.0] / this_round[rho])
    dim, ffn = model_dims(comp.transformer)
    context = TEXT_TOKENS + IMAGE_CONTEXT
    rows = [{"rho": 1.0, "tokens": tokens[1.0], "ms_step": round(statistics.median(times[1.0]) * 1000, 1)}]
    for rho in CAT_RHOS:
        speedup = statistics.median(ratios[rho])
        ideal = ideal_speedup(tokens[1.0], tokens[rho], dim, ffn, context)
        rows.append(
            {
                "rho": rho,
                "tokens": tokens[rho],
                "ms_step": round(statistics.median(times[rho]) * 1000, 1),
                "speedup": round(speedup, 3),
                "ideal_speedup": round(ideal, 3),
                "achieved_over_ideal": round(speedup / ideal, 3),
                "meets_target": speedup / ideal >= TARGET_OF_IDEAL,
            }
        )
    return {
        "benchmark": "trainer step through CAT tokens vs the same trainer with uniform tokens (rho 1.0)",
        "model": f"d={dim}, ffn={ffn}, {config['num_layers']} layers (random)",
        "latent_fhw": list(latent),
        "lora": f"rank {rank} on {', '.join(SELF_ATTN_TARGETS + FFN_TARGETS)}",
        "context_tokens": context,
        "rounds": rounds,
        "warmup_rounds": warmup,
        "target_of_ideal": TARGET_OF_IDEAL,
        "rows": rows,
        "ms_all": {str(rho): [round(t * 1000, 1) for t in times[rho]] for rho in arms},
        "method": "speedup = median over rounds of t(rho 1.0) / t(rho) within a round; arm order rotates per round",
    }


def cat_table(result: dict[str, Any]) -> str:
    lines = [
        f"\nCAT training step ({result['model']}, latent {result['latent_fhw']}, {result['lora']}; "
        f"median of {result['rounds']} rounds)",
        "| rho | tokens | ms/step | speedup | ideal | achieved/ideal |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['rho']} | {r['tokens']} | {r['ms_step']} | {r.get('speedup', '-')} | "
            f"{r.get('ideal_speedup', '-')} | {r.get('achieved_over_ideal', '-')} |"
        )
    met = all(r.get("meets_target", True) for r in result["rows"])
    lines.append(f"target achieved/ideal >= {result['target_of_ideal']}: {'met' if met else 'MISSED'}")
    return "\n".join(lines)
