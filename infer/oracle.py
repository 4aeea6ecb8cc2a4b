"""Perfect-denoiser harness: does CAT keep a model that really denoises clean?

    python -m infer.oracle --json runs/oracle.json [--no-correction] [--steps 20] [--seed 0]

Random weights say nothing about quality: their output is noise everywhere. A perfect model
knows the clean latent x0, so this runs the project's own sampler (`infer.sampler.Denoising`,
the loop the A/B uses) with an injected forward that returns `cat.oracle_velocity` (the ideal
velocity pushed through the very pack/unpack/correction code `cat_forward` uses), and measures
where the result lands. Embedded default (`infer.oracle_scene`): a 3x8x8 token grid (latent
16x3x16x16), left half flat (x0 constant over every 4x4 latent region and over all frames),
right half Gaussian texture, moving (fresh on every frame) on top and static (every frame equal to
latent frame 0, the conditioning image's latent) below; the model input carries frame 0 as the
image condition. Arms: uniform tokens; CAT at rho 1 / 0.75 / 0.5 / 0.25 and at the default
latent thresholds, allocated from x0's own `cat.latent_complexity` and held for every step; and
"+ref" arms (rho 0.5 / 0.25, thresholds) allocated from the maps against the reference frame
(`latent_complexity(x0, grid, reference=x0[:, :, :1])`), whose coarse tokens may restore the
reference's sub-token detail (read off the model input, as `cat_forward` does). Schedulers
Euler (FlowMatchEulerDiscreteScheduler, shift 3) and UniPC (flow prediction, shift 3), 20 steps,
with and without classifier-free guidance (the unconditional perfect model aims at another x0
with the same conditioning image and static texture, so the guided target is x0_u + g (x0 - x0_u)).
Variants: the coarse-cell correction on / off, `upsample` nearest / bilinear, `pool` mean /
renoise, and `timestep_sigma`: the correction at sigma = t / 1000 (what `cat_forward` assumed
before the sampler passed the scheduler's sigma).

Reported per run: mean |x - target| over fine cells, coarse cells whose target is constant over
the token's region, coarse cells with moving texture and coarse cells with static texture, the
moving-texture cells' distance to the pooled content U(P(target)) (+ R(ref) on detail cells: what
the corrected sampler converges to), and the number of detail cells. docs/cat.md derives it and
lists the measured table.
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
from infer.oracle_scene import (  # noqa: F401 (the scene's names, re-exported)
    CLASSES,
    GRID,
    REF,
    RHOS,
    Scene,
    allocations,
    cell_errors,
    clean_latent,
    image_condition,
    scene,
    uncond_latent,
)

STEPS = 20
SHIFT = 3.0
GUIDANCE = 5.0
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
    family: Any = None,
) -> Any:
    """A `ForwardFn` that knows x0: `cat.oracle_velocity` at the sigma the sampler hands the
    forward (the scheduler's own). `timestep_sigma`: the coarse-cell correction assumes
    sigma = t / 1000 instead, as `cat_forward` did before the sampler passed sigma (UniPC's
    integer timesteps make it inexact). The unconditional call (text is `negative`) aims at
    `x0_uncond`. An allocation with reference-detail tokens restores the `reference` the sampler
    hands it (the image held still), else reads the image's latent off the model input, as
    `cat_forward` does (`family.reference_latent`; None = default family)."""
    import cat
    from core.flow import NUM_TRAIN_TIMESTEPS
    from core.models import get_family

    family = family or get_family()

    layouts: dict[int, Any] = {}
    generator = torch.Generator().manual_seed(seed)

    def run(
        x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor, allocation: Any, sigma: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        target = x0_uncond if negative is not None and text is negative else x0
        layout = None
        if allocation is not None:
            if id(allocation) not in layouts:
                layouts.clear()
                layouts[id(allocation)] = (allocation, cat.build_layout(allocation).to(x.device))
            layout = layouts[id(allocation)][1]
        if reference is None and layout is not None and bool(layout.detail_cells.any()):
            reference = family.reference_latent(x)  # None (no image in the input): oracle_velocity says so
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
    still: torch.Tensor | None = None,
) -> torch.Tensor:
    """The final latent of `Denoising` with a perfect model aiming at x0 (CFG when guidance > 1);
    `forward` replaces the perfect forward; `family`: the model family whose geometry shapes the
    run (None = the default family); `condition` (default: `image_condition(x0)`, image-to-video
    with x0's frame 0 as the conditioning image's latent) is what the model input carries; `still`:
    the image held still, as latents, which reference-detail tokens restore (default: x0's frame 0
    on every frame, the latent scene's own reading of a still image)."""
    from core.models import get_family
    from infer.sampler import Conditioning, Denoising, lockstep

    family = family or get_family()
    geometry = family.geometry

    device = torch.device(device)
    _, _, f_, h, w = x0.shape
    text = torch.zeros(1, 1, 1, device=device)
    negative = torch.zeros(1, 1, 1, device=device) if guidance > 1.0 else None
    if condition is None:
        condition = image_condition(x0.float(), family).to(device)
    cond = Conditioning(
        text,
        negative,
        torch.zeros(1, 1, 1, device=device),
        condition,
        torch.zeros(1, 3, geometry.vae_s * h, geometry.vae_s * w),
        num_frames=geometry.pixel_frames(f_),
    )
    if family.reference_latent(family.model_input(x0.float().to(device), condition)) is not None:  # an image is given
        cond.still = (x0[:, :, :1].expand_as(x0) if still is None else still).float().to(device)
    comp = SimpleNamespace(device=device, dtype=dtype, scheduler=scheduler, transformer=None, family=family)
    if forward is None:
        forward = perfect_forward(
            x0,
            x0_uncond if x0_uncond is not None else x0,
            negative,
            upsample,
            pool,
            correct,
            seed,
            timestep_sigma,
            family,
        )
    run = Denoising(comp, cond, policy, steps=steps, seed=seed, guidance_scale=guidance, forward=forward)
    lockstep([run])
    return run.result.latents


def ab_latent_errors(
    comp: Any, reference: torch.Tensor, changes: list[tuple[int, Any]], *, steps: int, seed: int
) -> dict[str, float]:
    """The A/B's perfect-model column: mean |x - x0| of the uniform arm and of the CAT arm's own
    allocations (replayed step by step, `DenoiseResult.allocations`) when the model is perfect,
    x0 = the reference clip's VAE latent, with the A/B's scheduler, steps and seed; the model input
    carries x0's frame 0 as the conditioning image (`image_condition`); reference-detail tokens
    restore the clip's first frame held still, encoded by the same VAE, as the sampler does."""
    import copy

    from core.models import encode_video

    x0 = encode_video(comp, reference.to(comp.device)).float()
    first = reference[:, :, 0].to(comp.device, comp.dtype)
    still = comp.family.still_latent(comp, first, reference.shape[2]).float()  # as the sampler encodes it
    grid = (x0.shape[2], x0.shape[3] // 2, x0.shape[4] // 2)
    out = {}
    for name, policy in (("uniform", FixedPolicy(grid, None)), ("cat", ReplayPolicy(grid, changes))):
        x = sample(
            x0, policy, copy.deepcopy(comp.scheduler), steps=steps, seed=seed, device=comp.device, family=comp.family,
            still=still,
        )
        out[name] = float((x.float() - x0).abs().mean())
    return out


def run_harness(steps: int = STEPS, seed: int = 0, variants: tuple = VARIANTS) -> dict:
    """Every arm x scheduler x CFG x variant on the embedded default; rows for the JSON (1 torch
    thread: the tensors are tiny, and a second thread only waits on a busy machine)."""
    from infer.ab import cpu_threads

    with cpu_threads(1, torch.device("cpu")):
        return _run_harness(steps, seed, variants)


def _run_harness(steps: int, seed: int, variants: tuple) -> dict:
    main = scene(GRID, seed)
    x0, ref = main.x0, main.reference
    x0_other = uncond_latent(main, seed + 1)
    arms = allocations(x0, GRID, reference=True)
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
                            **cell_errors(x, target, alloc, main.flat, upsample, main.static, ref),
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
        "| textured to U(P(x0)) (+R(ref)) | coarse, static textured | detail cells |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['scheduler']} | {r['cfg']:g} | {r['arm']} | {r['tokens']} "
            f"| {f(r['fine'])} | {f(r['coarse_region_constant'])} | {f(r['coarse_textured'])} "
            f"| {f(r['coarse_textured_to_pooled'])} | {f(r['coarse_static'])} | {r['detail_cells']} |"
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
