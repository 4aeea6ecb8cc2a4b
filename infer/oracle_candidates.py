"""The two candidate coarse-cell treatments of issue 10, side by side under the perfect model.

- `sigma_residual` (what `cat_forward` does): the sub-token residual of x_s is noise, removed at
  the rate 1 / sigma: v = U(v_c) + (x_s - U(y)) / sigma. Stateless, trainable, works from step 0.
- `last_fine`: the sub-token residual of the last velocity computed while the cell was fine,
  v = U(v_c) + R(v_fine). Needs state in the sampler and at least one fine step before the cell
  goes coarse; nothing to train in stage 2.
- `none`: the upsampled coarse velocity alone (CAT before the fix).

Each runs the rho 0.5 allocation after `warmup` uniform steps (0: coarse from the first step, as
with the image warm-up; 2: the first two steps fine), Euler and UniPC, no CFG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cat.tokenizer import gather_patches, scatter_patches

CANDIDATES = ("none", "sigma_residual", "last_fine")
WARMUPS = (0, 2)


@dataclass
class WarmupPolicy:
    """Uniform tokens for the first `warmup` steps, then one fixed allocation."""

    grid: tuple[int, int, int]
    fixed: Any
    warmup: int

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> Any | None:
        return None if step < self.warmup else self.fixed

    def tokens(self, allocation: Any | None) -> int:
        return int(torch.tensor(self.grid).prod()) if allocation is None else int(allocation.num_tokens)


def last_fine_forward(x0: torch.Tensor) -> Any:
    """Perfect model; coarse cells add the sub-token residual of the last all-fine velocity."""
    import cat

    state: dict[str, Any] = {}

    def run(
        x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor, allocation: Any, sigma: torch.Tensor,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        noisy = x[:, : x0.shape[1]]
        if allocation is None:
            state["fine"] = cat.oracle_velocity(noisy, x0, sigma)
            return state["fine"]
        layout = cat.build_layout(allocation)
        velocity = cat.oracle_velocity(noisy, x0, sigma, layout, correct=False)
        fine = state.get("fine")
        if fine is None:
            return velocity
        return velocity + fine - scatter_patches(gather_patches(fine, layout), layout)

    return run


def run_candidates(steps: int, seed: int) -> list[dict]:
    from infer.oracle import GRID, allocations, cell_errors, clean_latent, make_scheduler, sample

    x0, flat = clean_latent(GRID, seed)
    alloc = allocations(x0, GRID)["rho 0.5"]
    rows = []
    for scheduler in ("euler", "unipc"):
        for warmup in WARMUPS:
            for name in CANDIDATES:
                policy = WarmupPolicy(GRID, alloc, warmup)
                forward = last_fine_forward(x0) if name == "last_fine" else None
                x = sample(
                    x0,
                    policy,
                    make_scheduler(scheduler),
                    steps=steps,
                    seed=seed,
                    correct=name == "sigma_residual",
                    forward=forward,
                )
                rows.append(
                    {
                        "candidate": name,
                        "scheduler": scheduler,
                        "warmup": warmup,
                        "arm": "rho 0.5",
                        **cell_errors(x, x0, alloc, flat),
                    }
                )
    return rows


def candidate_table(rows: list[dict]) -> list[str]:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.4f}"

    lines = [
        "| candidate | scheduler | uniform warm-up steps | fine | coarse, region-constant | coarse, textured "
        "| textured to U(P(x0)) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['candidate']} | {r['scheduler']} | {r['warmup']} | {f(r['fine'])} "
            f"| {f(r['coarse_region_constant'])} | {f(r['coarse_textured'])} "
            f"| {f(r['coarse_textured_to_pooled'])} |"
        )
    return lines
