"""Perfect-denoiser harness: does CAT keep a model that really denoises clean?

    python -m infer.oracle --json runs/oracle.json [--no-correction] [--steps 20] [--seed 0]

Random weights say nothing about quality: their output is noise everywhere. A perfect model
knows the clean latent x0, so this runs the project's own sampler (`infer.sampler.Denoising`,
the loop the A/B uses) with an injected forward that returns `cat.oracle_velocity` (the ideal
velocity pushed through the very pack/unpack/correction code `cat_forward` uses), and measures
where the result lands. Embedded default: a 3x8x8 token grid (latent 16x3x16x16), left half
flat (x0 constant over every 4x4 latent region and over all frames), right half textured
(Gaussian x0). Arms: uniform tokens; CAT at rho 1 / 0.75 / 0.5 / 0.25 and at the default latent
thresholds, allocated from x0's own `cat.latent_complexity` and held for every step. Schedulers
Euler (FlowMatchEulerDiscreteScheduler, shift 3) and UniPC (flow prediction, shift 3), 20 steps,
with and without classifier-free guidance (the unconditional perfect model aims at another x0,
so the guided target is x0_u + g (x0 - x0_u)). Variants: the coarse-cell correction on / off,
`upsample` nearest / bilinear, `pool` mean / renoise, and `timestep_sigma`: the correction at
sigma = t / 1000 (what `cat_forward` assumed before the sampler passed the scheduler's sigma).

Reported per run: mean |x - target| over fine cells, coarse cells whose target is constant over
the token's region, and coarse cells with textured content, plus the textured cells' distance
to the pooled content U(P(target)) (what the corrected sampler converges to). docs/cat.md
derives it and lists the measured table.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from core.io import write_json_atomic

GRID = (3, 8, 8)
STEPS = 20
SHIFT = 3.0
GUIDANCE = 5.0
RHOS = (1.0, 0.75, 0.5, 0.25)
# (name, upsample, pool, correct)
VARIANTS = (
    ("corrected", "nearest", "mean", True),
    ("uncorrected", "nearest", "mean", False),
    ("bilinear", "bilinear", "mean", True),
    ("bilinear_uncorrected", "bilinear", "mean", False),
    ("renoise", "nearest", "renoise", True),
    ("renoise_uncorrected", "nearest", "renoise", False),
    # the correction at sigma = t / 1000 (cat_forward before the sampler passed the scheduler's sigma)
    ("timestep_sigma", "nearest", "mean", True),
)
CLASSES = ("fine", "coarse_region_constant", "coarse_textured")


def clean_latent(
    grid: tuple[int, int, int] = GRID, seed: int = 0, family: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0 (1, C, F', 2H', 2W'), flat (F', H', W') bool per cell), C the family's noisy latent
    channels (None = the default family: 16): the left half constant over each 2x2-cell block and
    all frames (small steps between blocks), the right half Gaussian. Cells are 2x2 latent pixels."""
    from core.models import get_family

    c = (family or get_family()).geometry.noisy_channels
    f_, h_, w_ = grid
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, c, 1, 1, 1, generator=g)
    blocks = base + 0.05 * torch.randn(1, c, 1, h_ // 2, w_ // 2, generator=g)
    flat_part = blocks.repeat_interleave(4, dim=3).repeat_interleave(4, dim=4).expand(1, c, f_, -1, -1)
    x0 = torch.randn(1, c, f_, 2 * h_, 2 * w_, generator=g)
    half = 2 * (w_ // 2 // 2) * 2  # latent columns of whole blocks in the left half
    x0[..., :half] = flat_part[..., :half]
    flat = torch.zeros(f_, h_, w_, dtype=torch.bool)
    flat[..., : half // 2] = True
    return x0, flat


def allocations(x0: torch.Tensor, grid: tuple[int, int, int]) -> dict[str, Any]:
    """The arms: name -> Allocation (None = uniform), from x0's latent complexity."""
    from cat import allocate_from_complexity, latent_complexity
    from core.schema import CatInferConfig

    maps = latent_complexity(x0, grid)
    arms: dict[str, Any] = {"uniform": None}
    for rho in RHOS:
        arms[f"rho {rho:g}"] = allocate_from_complexity(maps, rho=rho)
    arms["thresholds default"] = allocate_from_complexity(maps, thresholds=tuple(CatInferConfig().latent_thresholds))
    return arms


@dataclass
class FixedPolicy:
    """One allocation for every step (None or all fine = uniform tokens)."""

    grid: tuple[int, int, int]
    fixed: Any

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> Any | None:
        return None if self.fixed is None or self.fixed.is_uniform else self.fixed

    def tokens(self, allocation: Any | None) -> int:
        return int(torch.tensor(self.grid).prod()) if allocation is None else int(allocation.num_tokens)


@dataclass
class ReplayPolicy:
    """The allocations another run used, step by step (`DenoiseResult.allocations`)."""

    grid: tuple[int, int, int]
    changes: list[tuple[int, Any]]

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> Any | None:
        current = None
        for first, alloc in self.changes:
            if first <= step:
                current = alloc
        return current

    def tokens(self, allocation: Any | None) -> int:
        return int(torch.tensor(self.grid).prod()) if allocation is None else int(allocation.num_tokens)


def perfect_forward(
    x0: torch.Tensor,
    x0_uncond: torch.Tensor | None,
    negative: torch.Tensor | None,
    upsample: str = "nearest",
    pool: str = "mean",
    correct: bool = True,
    seed: int = 0,
    timestep_sigma: bool = False,
) -> Any:
    """A `ForwardFn` that knows x0: `cat.oracle_velocity` at the sigma the sampler hands the
    forward (the scheduler's own). `timestep_sigma`: the coarse-cell correction assumes
    sigma = t / 1000 instead, as `cat_forward` did before the sampler passed sigma (UniPC's
    integer timesteps make it inexact). The unconditional call (text is `negative`) aims at
    `x0_uncond`."""
    import cat
    from core.flow import NUM_TRAIN_TIMESTEPS

    layouts: dict[int, Any] = {}
    generator = torch.Generator().manual_seed(seed)

    def run(
        x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor, allocation: Any, sigma: torch.Tensor
    ) -> torch.Tensor:
        target = x0_uncond if negative is not None and text is negative else x0
        layout = None
        if allocation is not None:
            if id(allocation) not in layouts:
                layouts.clear()
                layouts[id(allocation)] = (allocation, cat.build_layout(allocation).to(x.device))
            layout = layouts[id(allocation)][1]
        # reference-detail tokens: the conditioning image's clean latent is x0's frame 0 (image-to-video)
        reference = x0[:, :, :1].to(x.device) if layout is not None and bool(layout.detail_cells.any()) else None
        return cat.oracle_velocity(
            x[:, : target.shape[1]],
            target.to(x.device),
            sigma,
            layout,
            upsample=upsample,
            pool=pool,
            correct=correct,
            generator=generator,
            correction_sigma=t.float() / NUM_TRAIN_TIMESTEPS if timestep_sigma else None,
            reference=reference,
        )

    return run


def make_scheduler(name: str, shift: float = SHIFT) -> Any:
    from infer.sampler import make_scheduler as ab_scheduler

    return ab_scheduler(name, shift)


def sample(
    x0: torch.Tensor,
    policy: Any,
    scheduler: Any,
    *,
    steps: int = STEPS,
    seed: int = 0,
    guidance: float = 1.0,
    x0_uncond: torch.Tensor | None = None,
    upsample: str = "nearest",
    pool: str = "mean",
    correct: bool = True,
    condition: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    forward: Any = None,
    family: Any = None,
    timestep_sigma: bool = False,
) -> torch.Tensor:
    """The final latent of `Denoising` with a perfect model aiming at x0 (CFG when guidance > 1);
    `forward` replaces the perfect forward; `family`: the model family whose geometry shapes the
    run (None = the default family)."""
    from core.models import get_family
    from infer.sampler import Conditioning, Denoising, lockstep

    family = family or get_family()
    geometry = family.geometry

    device = torch.device(device)
    _, _, f_, h, w = x0.shape
    text = torch.zeros(1, 1, 1, device=device)
    negative = torch.zeros(1, 1, 1, device=device) if guidance > 1.0 else None
    if condition is None:
        condition = torch.zeros(1, geometry.condition_channels, f_, h, w, device=device)
    cond = Conditioning(
        text,
        negative,
        torch.zeros(1, 1, 1, device=device),
        condition,
        torch.zeros(1, 3, geometry.vae_s * h, geometry.vae_s * w),
        num_frames=geometry.pixel_frames(f_),
    )
    comp = SimpleNamespace(device=device, dtype=dtype, scheduler=scheduler, transformer=None, family=family)
    if forward is None:
        forward = perfect_forward(
            x0, x0_uncond if x0_uncond is not None else x0, negative, upsample, pool, correct, seed, timestep_sigma
        )
    run = Denoising(comp, cond, policy, steps=steps, seed=seed, guidance_scale=guidance, forward=forward)
    lockstep([run])
    return run.result.latents


def ab_latent_errors(
    comp: Any, reference: torch.Tensor, changes: list[tuple[int, Any]], *, steps: int, seed: int
) -> dict[str, float]:
    """The A/B's perfect-model column: mean |x - x0| of the uniform arm and of the CAT arm's own
    allocations (replayed step by step, `DenoiseResult.allocations`) when the model is perfect,
    x0 = the reference clip's VAE latent, with the A/B's scheduler, steps and seed."""
    import copy

    from core.models import encode_video

    x0 = encode_video(comp, reference.to(comp.device)).float()
    grid = (x0.shape[2], x0.shape[3] // 2, x0.shape[4] // 2)
    out = {}
    for name, policy in (("uniform", FixedPolicy(grid, None)), ("cat", ReplayPolicy(grid, changes))):
        x = sample(x0, policy, copy.deepcopy(comp.scheduler), steps=steps, seed=seed, device=comp.device)
        out[name] = float((x.float() - x0).abs().mean())
    return out


def cell_errors(
    x: torch.Tensor, target: torch.Tensor, allocation: Any, flat: torch.Tensor, upsample: str = "nearest"
) -> dict[str, float | None]:
    """Mean |x - target| per cell class (None when a class has no cells), and the textured coarse
    cells' distance to the pooled content U(P(target))."""
    from cat import pooled_content

    f_, h_, w_ = flat.shape
    err = (x.float() - target.float()).abs()

    def per_cell(e: torch.Tensor) -> torch.Tensor:  # (1, C, F', 2H', 2W') -> (F', H', W')
        return e.view(e.shape[1], f_, h_, 2, w_, 2).mean(dim=(0, 3, 5))

    cells = per_cell(err)
    if allocation is None or allocation.is_uniform:
        coarse = torch.zeros_like(flat)
        pooled = cells
    else:
        coarse = allocation.cell_levels() > 0
        pooled = per_cell((x.float() - pooled_content(target, allocation, upsample)).abs())
    masks = {"fine": ~coarse, "coarse_region_constant": coarse & flat, "coarse_textured": coarse & ~flat}
    out: dict[str, float | None] = {k: float(cells[m].mean()) if bool(m.any()) else None for k, m in masks.items()}
    m = masks["coarse_textured"]
    out["coarse_textured_to_pooled"] = float(pooled[m].mean()) if bool(m.any()) else None
    return out


def run_harness(steps: int = STEPS, seed: int = 0, variants: tuple = VARIANTS) -> dict:
    """Every arm x scheduler x CFG x variant on the embedded default; rows for the JSON (1 torch
    thread: the tensors are tiny, and a second thread only waits on a busy machine)."""
    from infer.ab import cpu_threads

    with cpu_threads(1, torch.device("cpu")):
        return _run_harness(steps, seed, variants)


def _run_harness(steps: int, seed: int, variants: tuple) -> dict:
    x0, flat = clean_latent(GRID, seed)
    x0_other, _ = clean_latent(GRID, seed + 1)
    arms = allocations(x0, GRID)
    uniform_tokens = GRID[0] * GRID[1] * GRID[2]
    rows = []
    for name, upsample, pool, correct in variants:
        for sched_name in ("euler", "unipc"):
            for guidance in (1.0, GUIDANCE):
                target = x0 if guidance == 1.0 else x0_other + guidance * (x0 - x0_other)
                for arm, alloc in arms.items():
                    if alloc is None and name != variants[0][0]:
                        continue  # stock tokens do not depend on the CAT variant
                    x = sample(
                        x0,
                        FixedPolicy(GRID, alloc),
                        make_scheduler(sched_name),
                        steps=steps,
                        seed=seed,
                        guidance=guidance,
                        x0_uncond=x0_other,
                        upsample=upsample,
                        pool=pool,
                        correct=correct,
                        timestep_sigma=name == "timestep_sigma",
                    )
                    tokens = uniform_tokens if alloc is None else alloc.num_tokens
                    rows.append(
                        {
                            "variant": name,
                            "upsample": upsample,
                            "pool": pool,
                            "correction": correct,
                            "scheduler": sched_name,
                            "cfg": guidance,
                            "arm": arm,
                            "tokens": tokens,
                            "uniform_tokens": uniform_tokens,
                            **cell_errors(x, target, alloc, flat, upsample),
                        }
                    )
    return {
        "grid": list(GRID),
        "latent": list(x0.shape),
        "steps": steps,
        "seed": seed,
        "shift": SHIFT,
        "guidance": GUIDANCE,
        "rows": rows,
    }


def table(rows: list[dict]) -> list[str]:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    head = (
        "| variant | scheduler | CFG | arm | tokens | fine | coarse, region-constant | coarse, textured "
        "| textured to U(P(x0)) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['scheduler']} | {r['cfg']:g} | {r['arm']} | {r['tokens']} "
            f"| {f(r['fine'])} | {f(r['coarse_region_constant'])} | {f(r['coarse_textured'])} "
            f"| {f(r['coarse_textured_to_pooled'])} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="runs/oracle.json", help="where the JSON goes")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-correction",
        action="store_true",
        help="only the variants without the coarse-cell correction (the numbers before the fix)",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        print(f"infer.oracle: --steps {args.steps} must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    start = time.perf_counter()
    variants = tuple(v for v in VARIANTS if not v[3]) if args.no_correction else VARIANTS
    result = run_harness(args.steps, args.seed, variants)
    if not args.no_correction:
        from infer.oracle_candidates import run_candidates

        result["candidates"] = run_candidates(args.steps, args.seed)
    result["seconds"] = round(time.perf_counter() - start, 2)
    if not result["rows"]:
        print("infer.oracle: no runs produced", file=sys.stderr)
        return 1
    print("\n".join(table(result["rows"])))
    if result.get("candidates"):
        from infer.oracle_candidates import candidate_table

        print("\nCandidates for the coarse cells (rho 0.5, no CFG), after a warm-up of uniform steps:")
        print("\n".join(candidate_table(result["candidates"])))
    path = write_json_atomic(args.json, result)
    print(f"\n{len(result['rows'])} runs in {result['seconds']:.1f} s -> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
