"""PNG plots of an A/B report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from core.io import atomic_path  # noqa: E402
from infer.report import lpips_label  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _clipped_errors(values: list[float], halves: list[float | None]) -> list[list[float]]:
    """Asymmetric error bars: a CI never drawn below zero (speedups and LPIPS are non-negative)."""
    halves = [h or 0.0 for h in halves]
    return [[min(h, v) for v, h in zip(values, halves, strict=True)], halves]


def plot_levels(levels: list[dict], calibrated: bool, path: Path, device: str = "") -> Path:
    """Speedup (with 95% CI and the cost-model ideal) and quality of CAT vs uniform per level: calibrated
    VMAF when the report carries it, else LPIPS with its (un)calibrated label."""
    names = [e["level"] for e in levels]
    x = list(range(len(names)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 0.8 * len(names) + 5), 4.5))
    speed = [e["speedup"] or 0 for e in levels]
    ax1.bar(x, speed, yerr=_clipped_errors(speed, [e["speedup_ci95"] for e in levels]), capsize=3,
            color="#3b7dd8", label="measured (mean, 95% CI)")
    ideal = [e.get("ideal_speedup") for e in levels]
    if any(v is not None for v in ideal):
        ax1.scatter(x, [v if v is not None else float("nan") for v in ideal], marker="_", s=300, color="crimson",
                    label="ideal (cost model)", zorder=3)
    ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel("speedup CAT / uniform (denoising)")
    ax1.set_title(f"Speedup per redundancy level{f' ({device})' if device else ''}", fontsize=9)
    ax1.legend(fontsize=7)
    # quality panel: calibrated VMAF (CAT vs uniform) when the report has it, else LPIPS with its label
    if any((e.get("quality") or {}).get("vmaf", {}).get("cat_vs_uniform") is not None for e in levels):
        label = "VMAF (calibrated)"
        vm = [(e.get("quality") or {}).get("vmaf", {}) for e in levels]
        lp = [m.get("cat_vs_uniform") or 0 for m in vm]
        halves = [m.get("cat_vs_uniform_ci95") for m in vm]
    else:
        label = lpips_label(calibrated)
        lp = [e["lpips_cat_vs_uniform"] or 0 for e in levels]
        halves = [e["lpips_cat_vs_uniform_ci95"] for e in levels]
    ax2.bar(x, lp, yerr=_clipped_errors(lp, halves), capsize=3, color="#d8813b")
    ax2.set_ylabel(f"{label}, CAT vs uniform")
    ax2.set_title(f"{label} per redundancy level", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    return _save(fig, path)


def plot_rho_curve(sweep: list[dict], calibrated: bool, path: Path) -> Path:
    """Speed/quality trade-off over rho: speedup and VMAF (calibrated; else labelled LPIPS) of CAT vs uniform."""
    rows = sorted(sweep, key=lambda r: r["rho"])
    rho = [r["rho"] for r in rows]
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax1.plot(rho, [r["speedup"] for r in rows], "o-", color="#3b7dd8", label="speedup")
    ax1.set_xlabel("rho (tokens / uniform tokens)")
    ax1.set_ylabel("speedup CAT / uniform", color="#3b7dd8")
    ax2 = ax1.twinx()
    use_vmaf = any(r.get("vmaf_cat_vs_uniform") is not None for r in rows)
    label = "VMAF (calibrated)" if use_vmaf else lpips_label(calibrated)
    key = "vmaf_cat_vs_uniform" if use_vmaf else "lpips_cat_vs_uniform"
    ax2.plot(rho, [r.get(key) or 0 for r in rows], "s--", color="#d8813b", label=label)
    ax2.set_ylabel(f"{label}, CAT vs uniform", color="#d8813b")
    ax1.set_title(f"Speed / quality over rho ({label})", fontsize=9)
    return _save(fig, path)


def plot_bound(rows: list[dict], path: Path) -> Path:
    """Ideal speedup (Wan2.1-14B cost model) vs VMAF of the bound, one panel per redundancy level:
    CAT's allocation (solid) against the content-blind one with the same token counts (dashed)."""
    from infer.report import level_order

    levels = sorted({r["level"] for r in rows}, key=level_order)
    cols = min(3, len(levels))
    nrows = -(-len(levels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.0 * nrows), squeeze=False, sharey=True)
    for ax, level in zip(axes.flat, levels, strict=False):
        for clip in sorted({r["clip"] for r in rows if r["level"] == level}):
            mine = sorted((r for r in rows if r["level"] == level and r["clip"] == clip), key=lambda r: r["ideal_speedup"])
            x = [r["ideal_speedup"] for r in mine]
            ax.plot(x, [r["vmaf_cat"] if r["vmaf_cat"] is not None else float("nan") for r in mine], "o-",
                    color="#3b7dd8", label="CAT")
            ax.plot(x, [r["vmaf_blind"] if r["vmaf_blind"] is not None else float("nan") for r in mine], "s--",
                    color="#d8813b", label="blind (same tokens)")
            for r in mine:
                if r["thresholds"] is not None and r["vmaf_cat"] is not None:
                    ax.annotate("thr", (r["ideal_speedup"], r["vmaf_cat"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.axhline(95, color="grey", lw=0.7, ls=":")
        ax.set_title(level, fontsize=9)
        ax.set_xlabel("ideal speedup (Wan2.1-14B cost model)", fontsize=7)
        ax.set_ylabel("VMAF of the bound (calibrated)", fontsize=7)
        ax.set_ylim(0, 102)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        axes.flat[0].legend(handles[:2], labels[:2], fontsize=7, loc="lower left")
    fig.suptitle("Quality bound per redundancy level: speed vs VMAF, CAT vs blind allocation", fontsize=10)
    return _save(fig, path)
