"""CAT at inference: which allocation each denoising step uses (`step_policy` binds a
`cat.UniformPolicy` / `cat.CatPolicy` to one run: `UniformSteps` / `CatSteps`).

In image-to-video the future frames are unknown, so the allocation is built in two phases:

1. warm-up (the first `warmup_steps` steps): spatial allocation from the conditioning image
   (its texture, repeated over the latent frames, never merged in time), or uniform tokens;
2. then from the model's own predicted clean latent x0 = x_s - s v (temporal and refined
   spatial complexity, `cat.latent_complexity`), recomputed every `refresh_every` steps.

`source: reference` instead reads the allocation off the reference clip's real frames (as in
training): an oracle for benchmarks, and the only content-aware choice when the weights are
random (a random model's x0 carries no content).

Reference detail (docs/cat.md): the conditioning image is known and clean, so a coarse token may
also restore its sub-token detail where that loses less (exact on any static region). Phase 2 and
`source: reference` measure each cell against it (the reference clip's frame 0 is the image; the
predicted x0 against the image held still, as latents, `reference_latent`, which the sampler
encodes once per run with `ModelFamily.still_latent`); the image warm-up stays plain (motion unknown).

A per-step `schedule` of coarseness factors (e.g. [2, 1]: first half twice as coarse) divides
rho or multiplies the thresholds, coarser early as DDiT found. An allocation with every token
fine returns None: the stock forward runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cat.policy import CatPolicy, StepPolicy, TokenPolicy, UniformPolicy, check_policy


def schedule_factor(schedule: list[float], step: int, num_steps: int) -> float:
    """The coarseness factor of `step`: the schedule's entries spread evenly over the steps."""
    return CatPolicy(schedule=tuple(schedule)).factor(step, num_steps)


def image_complexity(first_frame: torch.Tensor, grid: tuple[int, int, int], geometry: Any = None) -> Any:
    """Spatial complexity of the conditioning image on every latent frame; temporal = inf
    (unknown motion: never merge in time on the image's word alone). `geometry`: the model
    family's (None = the default family's)."""
    from cat.complexity import Complexity, region_complexity

    f_, h_, w_ = grid
    one = region_complexity(first_frame[:, :, None].float(), (1, h_, w_), geometry=geometry)
    spatial = one.spatial.expand(-1, f_, -1, -1).contiguous()
    return Complexity(spatial, torch.full_like(spatial, float("inf")))


@dataclass
class UniformSteps:
    """Every step uses Wan's own (1, 2, 2) patches."""

    grid: tuple[int, int, int]

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> None:
        return None

    def tokens(self, allocation: Any | None) -> int:
        f_, h_, w_ = self.grid
        return f_ * h_ * w_


@dataclass
class CatSteps:
    """Allocations of one CAT run (see the module docstring); cached until the budget changes."""

    settings: CatPolicy
    grid: tuple[int, int, int]
    first_frame: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    reference: torch.Tensor | None = None  # (1, 3, T, H, W) in [-1, 1], for source=reference
    geometry: Any = None  # the model family's Geometry (pixel cells of the image/reference); None = default family
    reference_latent: torch.Tensor | None = None  # (1, C, F', h, w) the image held still, as latents; None = plain x0 maps
    _cache: dict = field(default_factory=dict)
    _latent: Any = None

    def _budget(self, factor: float, latent: bool) -> dict[str, Any]:
        return self.settings.budget(factor, latent)

    def _fixed(self, kind: str, factor: float) -> Any:
        """Image- or reference-based allocation for this budget (computed once per factor)."""
        from cat import allocate, allocate_from_complexity

        key = (kind, factor)
        if key not in self._cache:
            if kind == "image":
                complexity = image_complexity(self.first_frame, self.grid, self.geometry)
                alloc = allocate_from_complexity(complexity, **self._budget(factor, False))
            else:
                alloc = allocate(self.reference, self.grid, **self._budget(factor, False), geometry=self.geometry,
                                 reference=True)  # frame 0 of the clip is the conditioning image
            alloc.info["source"] = kind
            self._cache[key] = alloc
        return self._cache[key]

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> Any | None:
        s = self.settings
        factor = s.factor(step, num_steps)
        if s.source == "reference":
            if self.reference is None:
                raise ValueError("cat.source=reference needs the reference clip")
            alloc = self._fixed("reference", factor)
        elif step < s.warmup_steps or x0 is None:
            alloc = self._fixed("image", factor) if s.warmup_tokens == "image" else None
        else:
            if self._latent is None or (step - s.warmup_steps) % s.refresh_every == 0 or self._latent[0] != factor:
                from cat import allocate_from_complexity, latent_complexity

                # x0: the noisy-latent channels only; against the image's clean latent when known
                complexity = latent_complexity(x0.float(), self.grid, reference=self.reference_latent)
                alloc = allocate_from_complexity(complexity, **self._budget(factor, True))
                alloc.info.update(source="predicted", step=step)
                self._latent = (factor, alloc)
            alloc = self._latent[1]
        if alloc is None or alloc.is_uniform:
            return None
        return alloc

    def tokens(self, allocation: Any | None) -> int:
        if allocation is None:
            f_, h_, w_ = self.grid
            return f_ * h_ * w_
        return int(allocation.num_tokens)


def step_policy(policy: TokenPolicy | StepPolicy, grid: tuple[int, int, int], first_frame: torch.Tensor,
                reference: torch.Tensor | None = None, geometry: Any = None,
                reference_latent: torch.Tensor | None = None) -> StepPolicy:
    """A token policy bound to one run (a policy already bound, e.g. the oracle's, passes through);
    `geometry`: the model family's (pixel cells of the image / reference), None = the default family;
    `reference_latent`: the conditioning image held still, as latents (`ModelFamily.still_latent`), for
    reference detail from the predicted clean latent (None: plain maps)."""
    if isinstance(policy, UniformPolicy):
        return UniformSteps(grid)
    if isinstance(policy, CatPolicy):
        if reference is not None:
            reference = reference.to(first_frame.device)
        return CatSteps(policy, grid, first_frame, reference, geometry, reference_latent)
    if hasattr(policy, "allocation") and hasattr(policy, "tokens"):
        return policy
    return check_policy(policy, "Denoising")
