"""bound.json, report.md and the plot of `infer.bound` (one row per clip x budget)."""

from __future__ import annotations

from pathlib import Path

from core.io import write_text_atomic
from infer.report import level_order, write_json_atomic

MAP_NOTE = (
    "Bound = the clip a perfect model reaches under the allocation: fine cells unchanged; a coarse "
    "spatial token's 16x16-px cells replaced by their per-frame means (its latent frame's 1 or 4 pixel "
    "frames); a spatio-temporal token's cells by their mean over 16x16 px and the pair's 8 pixel frames; "
    "pixel frame 0 (latent frame 0) only ever spatially. Reference detail (image-to-video: pixel frame 0 is "
    "the conditioning image): a coarse token CAT flags restores it, each of its cells becoming that pooled "
    "content plus (frame0 - cellmean(frame0)) per RGB channel (exact on static regions). Blind = the same "
    "numbers of coarse spatial and spatio-temporal tokens on a fixed regular pattern, content-blind: plain "
    "pooling (no reference detail)."
)


def _f(value: object, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def sorted_rows(rows: list[dict]) -> list[dict]:
    """Most redundant level first, then budgets in run order (rho high to low, thresholds last)."""
    return sorted(rows, key=lambda r: (level_order(r["level"]), r["clip"]))


def bound_table(rows: list[dict]) -> list[str]:
    """The markdown table: per clip x budget, token share, ideal speedup, and each metric CAT / blind."""
    head = (
        "| level | clip | budget | tokens (share) | reference-detail tokens | ideal speedup, 14B "
        "| VMAF CAT / blind "
        "| ST-LPIPS (alex, shift-tolerant, calibrated) CAT / blind | PSNR dB CAT / blind |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted_rows(rows):
        lines.append(
            f"| {r['level']} | {r['clip']} | {r['budget']} | {r['tokens']} ({r['tokens'] / r['uniform_tokens']:.2f}) "
            f"| {r.get('detail_tokens', '-')} | {r['ideal_speedup']:.2f}x | {_f(r['vmaf_cat'])} / {_f(r['vmaf_blind'])} "
            f"| {_f(r['st_lpips_cat'], 3)} / {_f(r['st_lpips_blind'], 3)} | {_f(r['psnr_cat'])} / {_f(r['psnr_blind'])} |"
        )
    return lines


def write_report_md(result: dict, path: Path, plot: str | None) -> Path:
    s = result["settings"]
    metrics = result["metrics"]
    lines = [
        "# Quality bound per redundancy level (perfect model, pixel space)",
        "",
        f"- clips: {s.get('clips_dir') or 'synthetic SI/TI grid ' + str(s['grid_width']) + 'x' + str(s['grid_height']) + ', ' + str(s['grid_frames']) + ' frames'}; "
        f"scored at {s['width']}x{s['height']}, first {s['num_frames']} frames",
        f"- allocations: `cat` on the {s['width']}x{s['height']} token grid, complexity read from "
        f"{sorted({r['complexity_from'] for r in result['rows']})}",
        f"- {MAP_NOTE}",
        f"- ideal speedup: cat.cost on Wan2.1-I2V-14B dimensions (d {result['cost_model']['dim']}, FFN "
        f"{result['cost_model']['ffn_dim']}, context {result['cost_model']['context_tokens']}) at each row's token count",
        f"- ST-LPIPS on {s['st_lpips_frames'] or 'all'} evenly spaced frames (first and last included); VMAF and PSNR on every frame",
        f"- device: {result['device']}; {result['seconds']:.0f} s",
        "",
        "## Metrics",
        "",
        "| metric | calibrated | better | how |",
        "|---|---|---|---|",
        *[
            f"| {m['label']} | {'yes' if m['calibrated'] else 'no'} | {'higher' if m['higher_is_better'] else 'lower'} "
            f"| {m['note']} |"
            for m in metrics.values()
        ],
        "",
        "## Bound per clip and budget",
        "",
        *bound_table(result["rows"]),
        "",
        "## Targets (benchmark, not timed tests)",
        "",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"- {name}: **{'met' if t['met'] else 'not met'}** ({t['rule']})"
            + (f"; misses: {'; '.join(t['misses'])}" if t["misses"] else "")
        )
    lines.append("")
    if plot:
        lines += ["## Plot", "", f"![ideal speedup vs VMAF per level]({plot})", ""]
    if result["rejected"]:
        lines += ["## Rejected clips", ""] + [f"- `{r['path']}`: {r['reason']}" for r in result["rejected"]] + [""]
    return write_text_atomic(path, "\n".join(lines))


def write_outputs(result: dict, out_dir: Path) -> None:
    """bound.json, report.md, plots/bound.png (relative paths in result["artifacts"])."""
    from infer.plots import plot_bound

    plot = plot_bound(result["rows"], out_dir / "plots" / "bound.png")
    result["artifacts"] = {"report_md": "report.md", "plot": str(plot.relative_to(out_dir))}
    write_json_atomic(out_dir / "bound.json", result)
    write_report_md(result, out_dir / "report.md", result["artifacts"]["plot"])
