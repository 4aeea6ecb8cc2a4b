"""One token-policy interface for training and inference: which tokens a transformer call runs.

- `UniformPolicy`: Wan's own (1, 2, 2) patches, the stock forward.
- `CatPolicy`: content-adaptive tokens. Budget: keep ratio `rho`, or with `rho` unset the
  `thresholds` on pixel complexity (and `latent_thresholds` on a predicted clean latent); an
  optional per-step coarseness `schedule`; at inference also where the allocation comes from
  (`source`, warm-up, refresh; `infer.policy` turns a policy into per-step allocations).

Training allocates from each window's real-frame complexity (`from_complexity`, the trainer's
per-step rho draw passed as `rho`); the held-out loss, the sampler, `infer.generate`, training
samples and the A/B take the same objects. Config files keep their own keys
(`tokenization.*` for stage 2, `cat.*` for inference): `CatPolicy.from_config` reads the latter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import torch

from cat.allocation import Allocation, allocate_from_complexity
from cat.complexity import Complexity


class StepPolicy(Protocol):
    """A policy bound to one denoising run: the allocation of each step (None = stock tokens)."""

    def allocation(self, step: int, num_steps: int, x0: torch.Tensor | None) -> Allocation | None: ...

    def tokens(self, allocation: Allocation | None) -> int: ...


@dataclass(frozen=True)
class UniformPolicy:
    """Every call runs Wan's own patches."""

    name: str = field(default="uniform", kw_only=True)  # the arm's name in reports

    def runs_stock(self, rho: float | None = None) -> bool:
        return True

    def from_complexity(self, maps: Complexity, rho: float | None = None) -> None:
        return None


@dataclass(frozen=True)
class CatPolicy:
    """CAT tokens: budget, schedule and (inference) allocation source; defaults = `CatInferConfig`'s."""

    rho: float | None = None  # keep ratio; None = thresholds
    thresholds: tuple[float, float] = (6.0, 1.0)  # [spatial, temporal] on pixel complexity (luma 0..255)
    latent_thresholds: tuple[float, float] = (0.5, 0.3)  # on the predicted clean latent
    schedule: tuple[float, ...] = ()  # coarseness factor per step span (rho / f, thresholds x f)
    source: str = "predicted"  # predicted (image warm-up, then x0) | reference (the clip's real frames)
    warmup_steps: int = 2
    warmup_tokens: str = "image"  # image | uniform
    refresh_every: int = 2
    name: str = field(default="cat", kw_only=True)

    @classmethod
    def from_config(cls, cfg: Any, **changes: Any) -> CatPolicy:
        """From a `core.schema.CatInferConfig` (the `cat:` section of generate and the A/B)."""
        fields = dict(
            rho=cfg.rho,
            thresholds=tuple(cfg.thresholds),
            latent_thresholds=tuple(cfg.latent_thresholds),
            schedule=tuple(cfg.schedule),
            source=cfg.source,
            warmup_steps=cfg.warmup_steps,
            warmup_tokens=cfg.warmup_tokens,
            refresh_every=cfg.refresh_every,
        )
        return cls(**{**fields, **changes})

    def factor(self, step: int, num_steps: int) -> float:
        """The coarseness factor of `step`: the schedule's entries spread evenly over the steps."""
        if not self.schedule:
            return 1.0
        return float(self.schedule[min(len(self.schedule) - 1, step * len(self.schedule) // max(1, num_steps))])

    def budget(self, factor: float = 1.0, latent: bool = False) -> dict[str, Any]:
        """`allocate` keyword arguments at coarseness `factor` (latent: the predicted-latent thresholds)."""
        if self.rho is not None:
            return {"rho": min(1.0, max(1e-3, self.rho / factor))}
        thr = self.latent_thresholds if latent else self.thresholds
        return {"thresholds": (thr[0] * factor, thr[1] * factor)}

    def runs_stock(self, rho: float | None = None) -> bool:
        """True at keep ratio 1 (`rho`, else the policy's): the stock forward, no allocation work."""
        rho = self.rho if rho is None else rho
        return rho is not None and math.isclose(rho, 1.0)

    def from_complexity(self, maps: Complexity, rho: float | None = None) -> Allocation | None:
        """The allocation of real-frame complexity maps at `rho` (default: the policy's budget);
        None at rho 1 (`runs_stock`)."""
        if self.runs_stock(rho):
            return None
        rho = self.rho if rho is None else rho
        return allocate_from_complexity(maps, **({"rho": rho} if rho is not None else self.budget()))


TokenPolicy = Union[UniformPolicy, CatPolicy]


def check_policy(policy: Any, where: str) -> TokenPolicy:
    """`policy` itself when it is a token policy, else a one-line TypeError naming `where`."""
    if not isinstance(policy, (UniformPolicy, CatPolicy)):
        raise TypeError(f"{where}: token policy must be cat.UniformPolicy() or cat.CatPolicy(...), got {policy!r}")
    return policy
