"""The A/B's arms (named token policies) and its typed results.

An arm is a name plus a token policy, an object `infer.sampler.Denoising` accepts. The first arm
is the baseline every other arm (a candidate) is compared with; today the A/B runs two,
"uniform" (Wan's own patches) and "cat". Adding an arm means adding it to `ab_arms`: the report,
its schema, the plots and the W&B logging loop over the arms they are given.

Results are dataclasses; `to_json` gives report.json's layout (infer/report_schema.py), in which
per-arm numbers carry the arm's name (`tokens_cat`, `{"uniform": ..., "cat": ...}`) and
comparisons both names (`lpips_cat_vs_uniform`). `from_json` reads them back (ranks exchange
results as JSON, never pickle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.schema import CatInferConfig


@dataclass(frozen=True)
class Arm:
    """One arm: its report name, its token policy (plain data; `Denoising` binds it to a run), its label
    in tables and plots, and, for an arm with a token budget, the same arm at another rho (sweep)."""

    name: str
    policy: Any  # a token policy infer.sampler.Denoising accepts (cat.TokenPolicy)
    label: str = ""
    at_rho: Callable[[float], Any] | None = None

    @property
    def title(self) -> str:
        return self.label or self.name


def arm_infos(arms: list[Arm]) -> list[dict[str, str]]:
    """The report's `arms`: name and label of each arm, the baseline first."""
    return [{"name": a.name, "label": a.title} for a in arms]


def ab_arms(settings: CatInferConfig) -> list[Arm]:
    """The A/B's arms: uniform tokens (the baseline) and CAT with `settings` (`cat.CatPolicy`)."""
    from cat.policy import CatPolicy, UniformPolicy

    return [
        Arm("uniform", UniformPolicy()),
        Arm("cat", CatPolicy.from_config(settings), label="CAT", at_rho=lambda rho: CatPolicy.from_config(settings, rho=rho)),
    ]


def ab_arm_infos(settings: CatInferConfig) -> list[dict[str, str]]:
    """The A/B's arm names and labels, without a clip (a report in which no clip ran still names its arms)."""
    return arm_infos(ab_arms(settings))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@dataclass
class ArmRun:
    """One arm, one seed: timing, tokens, memory, and its quality against the reference clip."""

    s_per_step: float  # mean wall seconds of one denoising step (all transformer calls + scheduler)
    s_per_video: float  # conditioning encode + all steps + VAE decode
    frames_per_s: float
    tokens_per_step: list[int]
    step_seconds: list[float]
    peak_memory_mb: float | None
    lpips_vs_reference: float | None = None
    psnr_vs_reference: float | None = None
    video: str | None = None  # the side-by-side video holding this arm (first seed)
    # coarse tokens per step that restore the conditioning image's sub-token detail (reference detail)
    detail_tokens_per_step: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> float:
        return _mean(self.tokens_per_step)

    @property
    def detail_tokens(self) -> float:
        return _mean(self.detail_tokens_per_step) if self.detail_tokens_per_step else 0.0


@dataclass
class SeedRun:
    """Every arm for one seed. `arms` keeps the arm order, the baseline first."""

    seed: int
    arms: dict[str, ArmRun]
    lpips_vs_baseline: dict[str, float | None] = field(default_factory=dict)  # candidate -> LPIPS
    quality: dict[str, Any] | None = None  # infer.metrics.VideoMetrics.compare_arms
    side_by_side: str | None = None
    oracle_latent_error: dict[str, float] | None = None  # first seed only (infer.oracle)

    @property
    def baseline(self) -> str:
        return next(iter(self.arms))

    @property
    def candidates(self) -> list[str]:
        return list(self.arms)[1:]

    def speedup(self, arm: str) -> float:
        """Baseline s/step over the arm's s/step."""
        return self.arms[self.baseline].s_per_step / self.arms[arm].s_per_step

    def to_json(self) -> dict[str, Any]:
        b = self.baseline
        out: dict[str, Any] = {"seed": self.seed, **{n: dataclasses.asdict(r) for n, r in self.arms.items()}}
        for c in self.candidates:
            out[f"speedup_{c}_vs_{b}"] = self.speedup(c)
            out[f"lpips_{c}_vs_{b}"] = self.lpips_vs_baseline.get(c)
        out["speedup"] = out[f"speedup_{self.candidates[0]}_vs_{b}"]  # schema 1's name: the first candidate
        out["side_by_side"] = self.side_by_side
        if self.quality is not None:
            out["quality"] = self.quality
        if self.oracle_latent_error is not None:
            out["oracle_latent_error"] = self.oracle_latent_error
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], names: list[str]) -> SeedRun:
        b = names[0]
        return cls(
            seed=data["seed"],
            arms={n: ArmRun(**data[n]) for n in names},
            lpips_vs_baseline={c: data.get(f"lpips_{c}_vs_{b}") for c in names[1:]},
            quality=data.get("quality"),
            side_by_side=data.get("side_by_side"),
            oracle_latent_error=data.get("oracle_latent_error"),
        )


@dataclass
class SweepRow:
    """One arm at one rho of the sweep (first seed), against the clip's first baseline run."""

    arm: str
    rho: float
    tokens: float
    speedup: float
    lpips_vs_baseline: float | None
    vmaf_vs_baseline: float | None

    def to_json(self, baseline: str) -> dict[str, Any]:
        a, b = self.arm, baseline
        return {
            "arm": a,
            "rho": self.rho,
            f"tokens_{a}": self.tokens,
            "speedup": self.speedup,
            f"lpips_{a}_vs_{b}": self.lpips_vs_baseline,
            f"vmaf_{a}_vs_{b}": self.vmaf_vs_baseline,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], baseline: str) -> SweepRow:
        a = data["arm"]
        return cls(
            a,
            data["rho"],
            data[f"tokens_{a}"],
            data["speedup"],
            data.get(f"lpips_{a}_vs_{baseline}"),
            data.get(f"vmaf_{a}_vs_{baseline}"),
        )


@dataclass
class ClipResult:
    """One clip: its level, every seed's run, the allocation overlay and the rho sweep; `arms` names
    and labels the arms its runs hold (the baseline first)."""

    path: str
    level: str
    arms: list[dict[str, str]]
    si: float | None = None
    ti: float | None = None
    overlay: str | None = None
    runs: list[SeedRun] = field(default_factory=list)
    sweep: list[SweepRow] = field(default_factory=list)

    def to_json(self, with_sweep: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "level": self.level,
            "si": self.si,
            "ti": self.ti,
            "overlay": self.overlay,
            "runs": [r.to_json() for r in self.runs],
        }
        if with_sweep:
            out["rho_sweep"] = [r.to_json(self.arms[0]["name"]) for r in self.sweep]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], arms: list[dict[str, str]]) -> ClipResult:
        names = [a["name"] for a in arms]
        return cls(
            data["path"],
            data["level"],
            arms,
            data.get("si"),
            data.get("ti"),
            data.get("overlay"),
            [SeedRun.from_json(r, names) for r in data["runs"]],
            [SweepRow.from_json(r, names[0]) for r in data.get("rho_sweep", [])],
        )
