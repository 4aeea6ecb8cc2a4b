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


def _names(arms: list[dict[str, str]]) -> tuple[str, list[str], dict[str, str]]:
    """(baseline, candidates, name -> label)."""
    label = {a["name"]: a.get("label") or a["name"] for a in arms}
    names = list(label)
    return names[0], names[1:], label


def plot_levels(levels: list[dict], arms: list[dict[str, str]], calibrated: bool, path: Path, device: str = "") -> Path:
    """Speedup (with 95% CI and the cost-model ideal) and quality of each candidate arm vs the baseline
    per level: calibrated VMAF when the report carries it, else LPIPS with its (un)calibrated label."""
    b, candidates, label = _names(arms)
    names = [e["level"] for e in levels]
    width = 0.8 / max(1, len(candidates))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8.0, 0.8 * len(names) + 5), 4.5))
    use_vmaf = any((e.get("quality") or {}).get("vmaf", {}).get(f"{c}_vs_{b}") is not None
                   for e in levels for c in candidates)
    quality_label = "VMAF (calibrated)" if use_vmaf else lpips_label(calibrated)
    colors = ["#3b7dd8", "#2a9d6f", "#8b5cc7"]
    for i, c in enumerate(candidates):
        x = [j + (i - (len(candidates) - 1) / 2) * width for j in range(len(names))]
        sp = f"speedup_{c}_vs_{b}"
        speed = [e[sp] or 0 for e in levels]
        ax1.bar(x, speed, width, yerr=_clipped_errors(speed, [e[f"{sp}_ci95"] for e in levels]), capsize=3,
                color=colors[i % len(colors)], label=f"{label[c]}: measured (mean, 95% CI)")
        ideal = [e.get(f"ideal_{sp}") for e in levels]
        if any(v is not None for v in ideal):
            ax1.scatter(x, [v if v is not None else float("nan") for v in ideal], marker="_", s=300, color="crimson",
                        label=f"{label[c]}: ideal (cost model)", zorder=3)
        if use_vmaf:
            vm = [(e.get("quality") or {}).get("vmaf", {}) for e in levels]
            values, halves = [m.get(f"{c}_vs_{b}") or 0 for m in vm], [m.get(f"{c}_vs_{b}_ci95") for m in vm]
        else:
            values = [e[f"lpips_{c}_vs_{b}"] or 0 for e in levels]
            halves = [e[f"lpips_{c}_vs_{b}_ci95"] for e in levels]
        ax2.bar(x, values, width, yerr=_clipped_errors(values, halves), capsize=3, color="#d8813b" if i == 0 else
                colors[i % len(colors)], label=label[c])
    versus = f"{' / '.join(label[c] for c in candidates)} vs {label[b]}"
    ax1.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel(f"speedup over {label[b]} (denoising)")
    ax1.set_title(f"Speedup per redundancy level{f' ({device})' if device else ''}", fontsize=9)
    ax1.legend(fontsize=7)
    ax2.set_ylabel(f"{quality_label}, {versus}")
    ax2.set_title(f"{quality_label} per redundancy level", fontsize=9)
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    return _save(fig, path)


def plot_rho_curve(sweep: list[dict], arms: list[dict[str, str]], calibrated: bool, path: Path) -> Path:
    """Speed/quality trade-off over rho per swept arm: speedup and VMAF (calibrated; else labelled LPIPS)
    against the baseline."""
    b, _, label = _names(arms)
    fig, ax1 = plt.subplots(figsize=(6, 4))
    ax2 = ax1.twinx()
    use_vmaf = any(r.get(f"vmaf_{r['arm']}_vs_{b}") is not None for r in sweep)
    quality_label = "VMAF (calibrated)" if use_vmaf else lpips_label(calibrated)
    for arm in dict.fromkeys(r["arm"] for r in sweep):
        rows = sorted((r for r in sweep if r["arm"] == arm), key=lambda r: r["rho"])
        rho = [r["rho"] for r in rows]
        key = f"{'vmaf' if use_vmaf else 'lpips'}_{arm}_vs_{b}"
        ax1.plot(rho, [r["speedup"] for r in rows], "o-", color="#3b7dd8", label=f"{label.get(arm, arm)} speedup")
        ax2.plot(rho, [r.get(key) or 0 for r in rows], "s--", color="#d8813b", label=f"{label.get(arm, arm)} {quality_label}")
    ax1.set_xlabel("rho (tokens / uniform tokens)")
    ax1.set_ylabel(f"speedup over {label[b]}", color="#3b7dd8")
    ax2.set_ylabel(f"{quality_label} vs {label[b]}", color="#d8813b")
    ax1.set_title(f"Speed / quality over rho ({quality_label})", fontsize=9)
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
