"""`make bench-cat`: stock forward vs `cat_forward` on a mid-size random Wan transformer, next to
the cost model's ideal, plus complexity + allocation time for a 33-frame UHD clip.

Stock and CAT forwards are timed in one process as adjacent pairs (each CAT run next to a stock
run, order alternating by round); the speedup is the median of the paired ratios, so load from
other processes that drifts over seconds hits both sides of a pair alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

import core  # noqa: F401  (offline environment first)
from cat.allocation import allocate_from_complexity
from cat.complexity import Complexity, region_complexity
from cat.cost import attention_share, ideal_speedup, model_dims
from cat.forward import cat_forward
from cat.tokenizer import build_layout

RHOS = (1.0, 0.75, 0.5, 0.25)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def synthetic_uhd_clip(frames: int = 33, height: int = 2160, width: int = 3840) -> torch.Tensor:
    """uint8 (1, 3, T, H, W): smooth gradient background, a static textured band and a moving
    textured square, so the maps have flat, textured and moving regions."""
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(40, 200, width).to(torch.uint8)
    clip = ramp.view(1, 1, 1, 1, width).expand(1, 3, frames, height, width).contiguous()
    band = torch.randint(0, 256, (1, 3, 1, height // 4, width), dtype=torch.uint8, generator=gen)
    clip[:, :, :, height // 2 : height // 2 + height // 4] = band
    square = torch.randint(0, 256, (1, 3, 512, 512), dtype=torch.uint8, generator=gen)
    for t in range(frames):
        x0 = 200 + 40 * t
        clip[:, :, t, 200:712, x0 : x0 + 512] = square
    return clip


def bench_complexity(repeats: int, with_float: bool = False) -> dict:
    clip = synthetic_uhd_clip()
    grid = (9, 2160 // 16, 3840 // 16)
    times, alloc = [], None
    for _ in tqdm(range(repeats), desc="UHD complexity + allocation", leave=False):
        start = time.perf_counter()
        alloc = allocate_from_complexity(region_complexity(clip, grid), rho=0.5)
        times.append(time.perf_counter() - start)
    result = {"complexity_uhd_s": statistics.median(times), "complexity_uhd_runs_s": times,
              "uhd_input": "uint8 (1, 3, 33, 2160, 3840)", "uhd_tokens": alloc.num_tokens,
              "uhd_uniform_tokens": alloc.uniform_tokens}
    if with_float:  # the same clip as float32 in [-1, 1] (3.3 GB)
        clip = clip.float().div_(127.5).sub_(1.0)
        float_times = []
        for _ in range(repeats):
            start = time.perf_counter()
            allocate_from_complexity(region_complexity(clip, grid), rho=0.5)
            float_times.append(time.perf_counter() - start)
        result["complexity_uhd_float_s"] = statistics.median(float_times)
    return result


def bench_forward(latent_shape: tuple[int, ...], rounds: int, context_image: int) -> dict:
    from diffusers import WanTransformer3DModel

    from core.models.wan21 import MIDSIZE_TRANSFORMER, TEXT_TOKENS

    torch.manual_seed(0)
    model = WanTransformer3DModel(**MIDSIZE_TRANSFORMER).eval()
    b, _, f, h, w = latent_shape
    x = torch.randn(latent_shape)
    t = torch.tensor([700.0] * b)
    text = torch.randn(b, TEXT_TOKENS, MIDSIZE_TRANSFORMER["text_dim"])
    image = torch.randn(b, context_image, MIDSIZE_TRANSFORMER["image_dim"])
    grid = (f, h // 2, w // 2)
    gen = torch.Generator().manual_seed(1)
    cx = Complexity(torch.rand(1, *grid, generator=gen) * 100, torch.rand(1, *grid, generator=gen) * 50)
    layouts = {rho: build_layout(allocate_from_complexity(cx, rho=rho)) for rho in RHOS}
    dim, ffn = model_dims(model)
    ctx = TEXT_TOKENS + context_image
    stock_ms: dict[float, list[float]] = {rho: [] for rho in RHOS}
    cat_ms: dict[float, list[float]] = {rho: [] for rho in RHOS}
    ratios: dict[float, list[float]] = {rho: [] for rho in RHOS}

    def stock_run() -> float:
        return _timed(lambda: model(x, t, text, image))

    def cat_run(rho: float) -> float:
        return _timed(lambda: cat_forward(model, x, t, text, image, allocation=layouts[rho]))

    with torch.inference_mode():
        stock_run()  # warm-up both paths once
        cat_run(0.5)
        for r in tqdm(range(rounds), desc="stock vs cat_forward rounds", leave=False):
            # each CAT run is paired with an adjacent stock run (order alternating by round), so
            # load that drifts over seconds hits both sides of a pair alike
            for rho in RHOS[r % len(RHOS) :] + RHOS[: r % len(RHOS)]:
                if r % 2:
                    c, s_ = cat_run(rho), stock_run()
                else:
                    s_, c = stock_run(), cat_run(rho)
                stock_ms[rho].append(s_)
                cat_ms[rho].append(c)
                ratios[rho].append(s_ / c)
    uniform = f * (h // 2) * (w // 2)
    rows = []
    for rho in RHOS:
        tokens = layouts[rho].num_tokens
        speedup = statistics.median(ratios[rho])
        ideal = ideal_speedup(uniform, tokens, dim, ffn, ctx)
        rows.append({
            "rho": rho, "tokens": tokens, "ms_stock": round(statistics.median(stock_ms[rho]), 1),
            "ms_cat": round(statistics.median(cat_ms[rho]), 1), "speedup": round(speedup, 3),
            "ideal_speedup": round(ideal, 3), "achieved_over_ideal": round(speedup / ideal, 3),
        })
    return {
        "rows": rows,
        "uniform_tokens": uniform,
        "rho1_overhead": round(1 / rows[0]["speedup"] - 1, 4),
        "attention_share_uniform": round(attention_share(uniform, dim, ffn, ctx), 3),
        "model": {"dim": dim, "ffn_dim": ffn, "layers": MIDSIZE_TRANSFORMER["num_layers"],
                  "heads": MIDSIZE_TRANSFORMER["num_attention_heads"], "context_tokens": ctx},
        "latent_shape": list(latent_shape),
        "rounds": rounds,
        "raw_ms": {str(rho): {"stock": stock_ms[rho], "cat": cat_ms[rho]} for rho in RHOS},
        "method": "speedup = median over rounds of stock_ms / cat_ms of adjacent (paired) runs",
    }


def print_table(result: dict) -> None:
    print(f"\nCAT forward, mid-size random Wan ({result['model']}), latent {result['latent_shape']}, "
          f"median of {result['rounds']} rounds of paired stock/CAT runs, {result['threads']} threads")
    print(f"{'rho':>5} {'tokens':>7} {'stock ms':>9} {'cat ms':>8} {'speedup':>8} {'ideal':>6} {'ach/ideal':>9}")
    for r in result["rows"]:
        print(f"{r['rho']:>5.2f} {r['tokens']:>7} {r['ms_stock']:>9.1f} {r['ms_cat']:>8.1f} {r['speedup']:>8.2f} "
              f"{r['ideal_speedup']:>6.2f} {r['achieved_over_ideal']:>9.2f}")
    print(f"rho=1.0 overhead vs stock: {100 * result['rho1_overhead']:+.1f}%")
    if "complexity_uhd_s" in result:
        print(f"complexity + allocation, 33x3840x2160 uint8 clip: {result['complexity_uhd_s']:.2f} s (median)")
    if "complexity_uhd_float_s" in result:
        print(f"complexity + allocation, same clip as float32: {result['complexity_uhd_float_s']:.2f} s (median)")
    print(f"load average before/after: {result['loadavg_before']} / {result['loadavg_after']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--latent", type=int, nargs=5, default=(1, 36, 9, 48, 48),
                        help="B C F' H W of the latent (default: 9 x 24 x 24 = 5,184 uniform tokens)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--image-tokens", type=int, default=257, help="CLIP image context tokens (Wan I2V: 257)")
    parser.add_argument("--uhd-repeats", type=int, default=3)
    parser.add_argument("--skip-uhd", action="store_true")
    parser.add_argument("--uhd-float", action="store_true", help="also time a float32 [-1, 1] UHD clip (3.3 GB)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a shared CPU, 2 OpenMP threads were 4-10x slower; 0 = torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "platform": platform.platform(),
                    "torch": torch.__version__, "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    if not args.skip_uhd:
        result.update(bench_complexity(args.uhd_repeats, args.uhd_float))
    result.update(bench_forward(tuple(args.latent), args.rounds, args.image_tokens))
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        tmp.replace(args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    from core.offline import use_offline_defaults

    use_offline_defaults()
    main()
