"""`make bench-gpu`: the real Wan2.1 I2V-14B transformer shape on one GPU, in one call.

    python -m train.bench_gpu [--json runs/bench/gpu.json] [--layers 2] [--repeats 3]

The transformer has the 14B configuration (5120 dims, 40 heads x 128, FFN 13824, image branch
1280 -> 5120, text 4096) but only `--layers` of its 40 blocks are built, with random bf16
weights. Each figure is measured with 1 block and with all built blocks; the difference is the
per-block cost, and the 40-layer figure is `t(1) + 39 * per_block` (same for peak memory),
labelled `*_40_extrapolated` in the JSON. Rows: stock vs CAT forward (SDPA attention) at
rho 1 / 0.75 / 0.5 / 0.25 at 480p x 33 and 720p x 81 with the cost model's ideal speedup; one
LoRA training step with gradient checkpointing (480p x 33 uniform; 720p x 33 uniform and CAT
rho 0.5); fp8 base weights with block swap (inference 720p x 81, training 480p x 33), from 4
built blocks with the last 2 swapped, extrapolated to 40 blocks with N swapped. Without CUDA it
prints one line and exits 0. Sized to finish in about 8 minutes on one H100/H200-class GPU.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import core  # noqa: F401  (offline environment first)
from cat.cost import ideal_speedup
from cat.tokenizer import Layout
from core.io import write_json_atomic
from core.memory import apply_base_dtype, apply_block_swap, parameter_bytes, place_transformer, settle_block_swap
from core.models.wan21 import CROSS_ATTN_TARGETS, FFN_TARGETS, SELF_ATTN_TARGETS, TEXT_TOKENS, patch_grid
from train.bench_shape import (
    IMAGE_TOKENS,
    REAL_LAYERS,
    SHAPES,
    WAN14B_I2V,
    build_model,
    forward,
    layout_for,
    make_inputs,
    measure,
    only_blocks,
    two_point,
)

INFERENCE_SHAPES = ("480p x 33", "720p x 81")
RHOS = (1.0, 0.75, 0.5, 0.25)
LORA_RANK = 32
SWAP_BUILT, SWAP_BUILT_SWAPPED = 4, 2
SWAP_TARGETS = (0, 10, 20, 30)  # blocks_to_swap values the 40-layer figures are extrapolated for


def inference_rows(
    model: Any,
    device: torch.device,
    dtype: torch.dtype,
    layers: int,
    repeats: int,
    shapes: dict[str, tuple[int, int, int]],
) -> list[dict[str, Any]]:
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    ffn, context = model.config.ffn_dim, TEXT_TOKENS + IMAGE_TOKENS
    rows = []
    for name in INFERENCE_SHAPES:
        shape = shapes[name]
        inputs = make_inputs(model, shape, device, dtype)
        uniform = math.prod(patch_grid(*shape))
        with torch.inference_mode():
            stock = two_point(model, lambda x=inputs: forward(model, x), device, layers, repeats)
            rows.append({"shape": name, "arm": "stock", "tokens": uniform, **stock})
            for rho in RHOS:
                layout = layout_for(shape, rho, device)
                cat = two_point(model, lambda x=inputs, lay=layout: forward(model, x, lay), device, layers, repeats)
                speedup = stock["s_40_extrapolated"] / cat["s_40_extrapolated"]
                ideal = ideal_speedup(uniform, layout.num_tokens, dim, ffn, context)
                rows.append(
                    {
                        "shape": name,
                        "arm": "cat",
                        "rho": rho,
                        "tokens": layout.num_tokens,
                        **cat,
                        "speedup_40": round(speedup, 3),
                        "ideal_speedup": round(ideal, 3),
                        "achieved_over_ideal": round(speedup / ideal, 3),
                    }
                )
    return rows


def add_lora(model: Any, name: str, targets: tuple[str, ...]) -> torch.optim.Optimizer:
    """A rank-32 LoRA (fp32 weights, as the trainer keeps them) and its AdamW."""
    from peft import LoraConfig

    model.add_adapter(LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, target_modules=list(targets)), adapter_name=name)
    model.set_adapter(name)
    params = [p for n, p in model.named_parameters() if f".{name}." in n and ".lora_" in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return torch.optim.AdamW(params, lr=1e-5)


def train_step_fn(
    model: Any,
    inputs: dict[str, torch.Tensor],
    layout: Layout | None,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> Callable[[], None]:
    """Forward under bf16 autocast (accelerate's mixed_precision=bf16), MSE, backward, AdamW step."""
    noisy = inputs["hidden_states"][:, : model.config.out_channels]  # the velocity has the noisy channels' shape
    target = torch.randn(noisy.shape, generator=torch.Generator().manual_seed(2))
    target = target.to(device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = forward(model, inputs, layout)
        loss = torch.nn.functional.mse_loss(out.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def training_rows(
    model: Any,
    device: torch.device,
    dtype: torch.dtype,
    layers: int,
    repeats: int,
    shapes: dict[str, tuple[int, int, int]],
) -> list[dict[str, Any]]:
    """LoRA steps with gradient checkpointing: stage 1 (cross-attention) at 480p, stage 2 (self-attention + FFN)
    at 720p x 33 with uniform tokens and CAT rho 0.5."""
    model.enable_gradient_checkpointing()
    model.train()
    rows = []
    plan = (
        ("480p x 33", "style", CROSS_ATTN_TARGETS, (None,)),
        ("720p x 33", "motion", SELF_ATTN_TARGETS + FFN_TARGETS, (None, 0.5)),
    )
    for shape_name, adapter, targets, rhos in plan:
        shape = shapes[shape_name]
        optimizer = add_lora(model, adapter, targets)
        inputs = make_inputs(model, shape, device, dtype)
        for rho in rhos:
            layout = None if rho is None else layout_for(shape, rho, device)
            figures = two_point(model, train_step_fn(model, inputs, layout, optimizer, device), device, layers, repeats)
            rows.append(
                {
                    "shape": shape_name,
                    "lora": f"{adapter} ({', '.join(targets)}), rank {LORA_RANK}",
                    "tokens": "uniform" if rho is None else f"CAT rho {rho}",
                    "token_count": layout.num_tokens if layout is not None else math.prod(patch_grid(*shape)),
                    **figures,
                }
            )
        model.delete_adapters(adapter)
    model.disable_gradient_checkpointing()
    model.eval()
    return rows


def swap_figures(model: Any, fn: Callable[[], Any], device: torch.device, repeats: int, after_adapter: bool) -> dict:
    """Timings with SWAP_BUILT blocks: half of them alone, all resident, then the last SWAP_BUILT_SWAPPED swapped;
    per-block costs -> 40-layer figures for each blocks_to_swap in SWAP_TARGETS."""
    half = SWAP_BUILT - SWAP_BUILT_SWAPPED
    with only_blocks(model, half):
        t_half, m_half = measure(fn, device, repeats)
    t_all, m_all = measure(fn, device, repeats)
    place_transformer(model, device, SWAP_BUILT_SWAPPED)
    if after_adapter:
        settle_block_swap(model)
    t_swap, m_swap = measure(fn, device, repeats)
    apply_block_swap(model, 0, device)  # hooks off, weights back on the device for the next section
    model.to(device)
    resident = (t_all - t_half) / SWAP_BUILT_SWAPPED
    swapped = resident + (t_swap - t_all) / SWAP_BUILT_SWAPPED
    overhead = t_half - half * resident
    block_gib = parameter_bytes(model.blocks[0]) / 2**30
    out: dict[str, Any] = {
        "blocks_built": SWAP_BUILT,
        "blocks_swapped_built": SWAP_BUILT_SWAPPED,
        "s_measured_no_swap": round(t_all, 4),
        "s_measured_swap": round(t_swap, 4),
        "s_per_resident_block": round(resident, 4),
        "s_per_swapped_block": round(swapped, 4),
        "block_weights_gib_fp8": round(block_gib, 3),
        "formula": "s_40(N) = overhead + (40 - N) * s_resident + N * s_swapped; peak_40(N > 0) = peak_swap_measured "
        "+ (40 - N - 2) * gib_per_layer + (N - 2) * (gib_per_layer - block_weights); peak_40(0) = "
        "peak_no_swap_measured + 36 * gib_per_layer (all extrapolated)",
    }
    if m_swap is not None:
        per_layer = (m_all - m_half) / SWAP_BUILT_SWAPPED
        out.update(
            peak_gib_measured_no_swap=round(m_all, 2),
            peak_gib_measured_swap=round(m_swap, 2),
            peak_gib_per_layer=round(per_layer, 3),
        )
    rows = []
    for n in SWAP_TARGETS:
        row: dict[str, Any] = {
            "blocks_to_swap": n,
            "s_40_extrapolated": round(overhead + (REAL_LAYERS - n) * resident + n * swapped, 3),
        }
        if m_swap is not None:
            if n == 0:  # every block resident: from the run without swap
                peak = m_all + (REAL_LAYERS - SWAP_BUILT) * per_layer
            else:
                resident_more = REAL_LAYERS - n - (SWAP_BUILT - SWAP_BUILT_SWAPPED)
                peak = m_swap + resident_more * per_layer + (n - SWAP_BUILT_SWAPPED) * (per_layer - block_gib)
            row["peak_gib_40_extrapolated"] = round(peak, 2)
        rows.append(row)
    out["extrapolated"] = rows
    return out


def fp8_swap_rows(
    device: torch.device, repeats: int, shapes: dict[str, tuple[int, int, int]], config: dict | None = None
) -> dict[str, Any]:
    model = build_model(SWAP_BUILT, device, torch.bfloat16, config)
    apply_base_dtype(model, "fp8")
    result: dict[str, Any] = {"base_dtype": "fp8 (float8_e4m3fn storage, bf16 compute)"}
    inputs = make_inputs(model, shapes["720p x 81"], device, torch.bfloat16)
    with torch.inference_mode():
        result["inference 720p x 81 stock"] = swap_figures(
            model, lambda: forward(model, inputs), device, repeats, after_adapter=False
        )
    model.enable_gradient_checkpointing()
    model.train()
    optimizer = add_lora(model, "style", CROSS_ATTN_TARGETS)
    inputs = make_inputs(model, shapes["480p x 33"], device, torch.bfloat16)
    step = train_step_fn(model, inputs, None, optimizer, device)
    result["training 480p x 33 uniform, stage-1 LoRA, gradient checkpointing"] = swap_figures(
        model, step, device, repeats, after_adapter=True
    )
    return result


def run(
    device: str | torch.device = "cuda",
    layers: int = 2,
    repeats: int = 3,
    config: dict | None = None,
    shapes: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """Every section; `config`/`shapes` replace the 14B configuration and the clip sizes (CPU tests)."""
    device = torch.device(device)
    shapes = shapes or SHAPES
    if layers < 2:
        raise ValueError("--layers must be >= 2 (the per-layer cost is the difference of 1 and N blocks)")
    start = time.perf_counter()
    dtype = torch.bfloat16
    model = build_model(layers, device, dtype, config)
    result: dict[str, Any] = {
        "benchmark": "Wan2.1 I2V-14B transformer shape, a few of 40 layers built (random bf16 weights)",
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "torch": torch.__version__,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in {**(config or WAN14B_I2V)}.items()},
        "layers_built": layers,
        "real_layers": REAL_LAYERS,
        "repeats": repeats,
        "attention": "SDPA (diffusers default)",
        "method": "each figure measured with 1 block and with all built blocks (median of repeats after a warm-up); "
        "*_40_extrapolated = value(1) + 39 * per-layer difference; not a 40-layer measurement",
        "block_weights_gib_bf16": round(parameter_bytes(model.blocks[0]) / 2**30, 3),
    }
    result["inference"] = inference_rows(model, device, dtype, layers, repeats, shapes)
    result["training"] = training_rows(model, device, dtype, layers, repeats, shapes)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    result["fp8_block_swap"] = fp8_swap_rows(device, repeats, shapes, config)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{result['benchmark']} on {result['device']}; 40-layer figures EXTRAPOLATED from "
        f"{result['layers_built']} built layers",
        "",
        "| shape | arm | rho | tokens | s/step (40, extrap.) | speedup | ideal | achieved/ideal | peak GiB (40, extrap.) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["inference"]:
        lines.append(
            f"| {r['shape']} | {r['arm']} | {r.get('rho', '-')} | {r['tokens']} | {r['s_40_extrapolated']} | "
            f"{r.get('speedup_40', '-')} | {r.get('ideal_speedup', '-')} | {r.get('achieved_over_ideal', '-')} "
            f"| {r.get('peak_gib_40_extrapolated', '-')} |"
        )
    lines += ["", "| training step | tokens | s/step (40, extrap.) | peak GiB (40, extrap.) |", "|---|---|---|---|"]
    for r in result["training"]:
        lines.append(
            f"| {r['shape']}, {r['lora']} | {r['tokens']} ({r['token_count']}) | {r['s_40_extrapolated']} | "
            f"{r.get('peak_gib_40_extrapolated', '-')} |"
        )
    for name, figures in result["fp8_block_swap"].items():
        if not isinstance(figures, dict):
            continue
        lines += [
            "",
            f"fp8 + block swap, {name}:",
            "| blocks_to_swap | s/step (40, extrap.) | peak GiB (40, extrap.) |",
            "|---|---|---|",
        ]
        for r in figures["extrapolated"]:
            lines.append(
                f"| {r['blocks_to_swap']} | {r['s_40_extrapolated']} | {r.get('peak_gib_40_extrapolated', '-')} |"
            )
    lines.append(f"\nwall time {result['wall_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.bench_gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", default=None, help="write the result JSON here")
    parser.add_argument("--layers", type=int, default=2, help="blocks built (>= 2); figures extrapolated to 40")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per figure (median), after one warm-up")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available():
        print("bench-gpu: no CUDA GPU visible, nothing measured (run it on an H100/H200-class GPU)")
        return 0
    result = run("cuda", args.layers, args.repeats)
    print(table(result))
    if args.json:
        path = write_json_atomic(args.json, result)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
