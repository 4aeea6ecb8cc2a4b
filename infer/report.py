"""Per-level aggregation of A/B runs, and report.json / report.md (schema: infer/report_schema.py)."""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any

import core.io as core_io
from infer.metrics import QUALITY_KEYS, UNCALIBRATED, mean_ci, metric_specs
from infer.report_schema import validate


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def _ci(values: list[float | None]) -> tuple[float | None, float | None]:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    mean, half = mean_ci(finite)
    return mean, half


def level_order(level: str) -> tuple:
    """Most redundant first: SI low < medium < high, then TI likewise; unknown names last."""
    rank = {"low": 0, "medium": 1, "high": 2}
    parts = level.replace("SI-", "").replace("TI-", "").split("/")
    if len(parts) == 2 and all(p in rank for p in parts):
        return (0, rank[parts[0]], rank[parts[1]], level)
    return (1, 0, 0, level)


def _step_median(uniform: list[dict], cat: list[dict]) -> float:
    """Median over every paired step (same run, same step index) of uniform / CAT step time; a
    steady-state figure that one-off work (CAT's first allocation) and load spikes barely move."""
    ratios = [a / b for u, c in zip(uniform, cat, strict=True)
              for a, b in zip(u.get("step_seconds", []), c.get("step_seconds", []), strict=False) if b > 0]
    return statistics.median(ratios) if ratios else uniform[0]["s_per_step"] / cat[0]["s_per_step"]


def quality_summary(runs: list[dict]) -> dict:
    """Per calibrated metric (VMAF, ST-LPIPS, PSNR, SSIM): CAT vs uniform (mean, 95% CI) and each arm
    vs the reference (means), each with its `calibrated` flag."""
    specs = metric_specs()
    scored = [r["quality"] for r in runs if r.get("quality")]
    out = {}
    for key in QUALITY_KEYS:
        mean, half = _ci([q["cat_vs_uniform"][key] for q in scored])
        out[key] = {"calibrated": specs[key]["calibrated"], "cat_vs_uniform": mean, "cat_vs_uniform_ci95": half,
                    "vs_reference": {arm: _mean([q["vs_reference"][arm][key] for q in scored])
                                     for arm in ("uniform", "cat")}}
    return out


def aggregate_levels(clips: list[dict], calibrated: bool, ideal: Any = None) -> list[dict]:
    """One entry per redundancy level: means over clips x seeds, 95% CI for speedup and LPIPS.

    `ideal(tokens_uniform, tokens_cat) -> float | None` adds the cost model's ideal speedup."""
    by_level: dict[str, list[dict]] = OrderedDict()
    for clip in sorted(clips, key=lambda c: level_order(c["level"])):
        by_level.setdefault(clip["level"], []).extend(clip["runs"])
    levels = []
    for level, runs in by_level.items():
        if not runs:
            continue
        u = [r["uniform"] for r in runs]
        c = [r["cat"] for r in runs]
        speedup, speedup_ci = _ci([r["speedup"] for r in runs])
        lp, lp_ci = _ci([r["lpips_cat_vs_uniform"] for r in runs])
        tokens_u = _mean([_mean(a["tokens_per_step"]) for a in u])
        tokens_c = _mean([_mean(a["tokens_per_step"]) for a in c])
        entry = {
            "level": level,
            "runs": len(runs),
            "tokens_uniform": tokens_u,
            "tokens_cat": tokens_c,
            "s_per_step_uniform": _mean([a["s_per_step"] for a in u]),
            "s_per_step_cat": _mean([a["s_per_step"] for a in c]),
            "s_per_video_uniform": _mean([a["s_per_video"] for a in u]),
            "s_per_video_cat": _mean([a["s_per_video"] for a in c]),
            "frames_per_s_uniform": _mean([a["frames_per_s"] for a in u]),
            "frames_per_s_cat": _mean([a["frames_per_s"] for a in c]),
            "speedup": speedup,
            "speedup_ci95": speedup_ci,
            "speedup_median": statistics.median([r["speedup"] for r in runs]),
            "speedup_step_median": _step_median(u, c),
            "speedup_end_to_end": _mean([a["s_per_video"] / b["s_per_video"] for a, b in zip(u, c, strict=True)]),
            "lpips_cat_vs_uniform": lp,
            "lpips_cat_vs_uniform_ci95": lp_ci,
            "lpips_vs_reference": {"uniform": _mean([a["lpips_vs_reference"] for a in u]),
                                   "cat": _mean([a["lpips_vs_reference"] for a in c])},
            "psnr_vs_reference": {"uniform": _mean([a["psnr_vs_reference"] for a in u]),
                                  "cat": _mean([a["psnr_vs_reference"] for a in c])},
            "peak_memory_mb": {"uniform": _mean([a["peak_memory_mb"] for a in u]),
                               "cat": _mean([a["peak_memory_mb"] for a in c])},
            "ideal_speedup": ideal(tokens_u, tokens_c) if ideal is not None and tokens_u and tokens_c else None,
            "lpips_calibrated": calibrated,
            "oracle_latent_error": {arm: _mean([r.get("oracle_latent_error", {}).get(arm) for r in runs])
                                    for arm in ("uniform", "cat")},
        }
        if any(r.get("quality") for r in runs):
            entry["quality"] = quality_summary(runs)
        levels.append(entry)
    return levels


def write_json_atomic(path: Path, payload: Any) -> Path:
    """Reports: NaN or infinity is a bug (unavailable numbers are null), so it raises instead of writing."""
    return core_io.write_json_atomic(path, payload, allow_nan=False)


def write_report_json(report: dict, path: Path) -> Path:
    """Validate against the schema, then write atomically; a schema violation is a bug: raise."""
    errors = validate(report)
    if errors:
        raise ValueError("report.json does not match its schema:\n  " + "\n  ".join(errors[:20]))
    return write_json_atomic(path, report)


# ---------------------------------------------------------------- markdown
def _f(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(value: Any, half: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f} ± {half:.{digits}f}" if half else f"{value:.{digits}f}"


def lpips_label(calibrated: bool) -> str:
    return "LPIPS" if calibrated else f"LPIPS ({UNCALIBRATED})"


def level_table(levels: list[dict], calibrated: bool) -> list[str]:
    """The per-level markdown table (also printed by infer.bench)."""
    lp = lpips_label(calibrated)
    head = (f"| level | runs | tokens uniform | tokens CAT | s/step uniform | s/step CAT | speedup (95% CI) "
            f"| step-median speedup | ideal "
            f"| {lp} CAT vs uniform | {lp} vs ref U / CAT | PSNR vs ref U / CAT |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in levels:
        ratio = e["tokens_cat"] / e["tokens_uniform"] if e["tokens_uniform"] else None
        lines.append(
            f"| {e['level']} | {e['runs']} | {_f(e['tokens_uniform'], 0)} | {_f(e['tokens_cat'], 0)} ({_f(ratio, 2)}) "
            f"| {_f(e['s_per_step_uniform'])} | {_f(e['s_per_step_cat'])} | {_pm(e['speedup'], e['speedup_ci95'])}x "
            f"| {_f(e.get('speedup_step_median'), 2)}x | {_f(e.get('ideal_speedup'), 2)} | {_pm(e['lpips_cat_vs_uniform'], e['lpips_cat_vs_uniform_ci95'], 4)} "
            f"| {_f(e['lpips_vs_reference']['uniform'], 4)} / {_f(e['lpips_vs_reference']['cat'], 4)} "
            f"| {_f(e['psnr_vs_reference']['uniform'], 2)} / {_f(e['psnr_vs_reference']['cat'], 2)} |"
        )
    return lines


def oracle_table(levels: list[dict]) -> list[str]:
    """Perfect model (oracle): what each arm's tokenization alone costs when the model is perfect."""
    rows = [e for e in levels if (e.get("oracle_latent_error") or {}).get("cat") is not None]
    if not rows:
        return []
    lines = ["## Perfect model (oracle)", "",
             "Latent error mean |x - x0| when the transformer is replaced by the perfect denoiser of x0 = the",
             "reference clip's VAE latent (infer.oracle), same scheduler, steps and seed, the CAT arm's own",
             "allocations replayed step by step: what the tokenization alone gives up (0 = nothing).", "",
             "| level | tokens CAT / uniform | perfect model (oracle): latent error CAT | perfect model (oracle): latent error uniform |",
             "|---|---|---|---|"]
    for e in rows:
        ratio = e["tokens_cat"] / e["tokens_uniform"] if e["tokens_uniform"] else None
        err = e["oracle_latent_error"]
        lines.append(f"| {e['level']} | {_f(ratio, 2)} | {_f(err['cat'], 4)} | {_f(err['uniform'], 4)} |")
    return lines + [""]


def quality_table(levels: list[dict], metrics: dict) -> list[str]:
    """Calibrated metrics per level: CAT vs uniform (uniform as reference) and each arm vs the reference clip."""
    keys = [k for k in QUALITY_KEYS if k in metrics]
    if not keys or not any(e.get("quality") for e in levels):
        return []
    head = "| level | " + " | ".join(f"{metrics[k]['label']} CAT vs uniform | {metrics[k]['label']} vs ref U / CAT"
                                      for k in keys) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    digits = {"vmaf": 2, "st_lpips": 4, "psnr": 2, "ssim": 4}
    for e in levels:
        q = e.get("quality") or {}
        cells = []
        for k in keys:
            m = q.get(k) or {"cat_vs_uniform": None, "cat_vs_uniform_ci95": None, "vs_reference": {"uniform": None, "cat": None}}
            d = digits.get(k, 3)
            cells.append(f"{_pm(m['cat_vs_uniform'], m['cat_vs_uniform_ci95'], d)} "
                         f"| {_f(m['vs_reference']['uniform'], d)} / {_f(m['vs_reference']['cat'], d)}")
        lines.append(f"| {e['level']} | " + " | ".join(cells) + " |")
    return lines


def write_report_md(report: dict, path: Path) -> Path:
    """report.md: settings, the LPIPS calibration note, the per-level table, sweep, plots, videos, rejects."""
    calibrated = report["lpips_calibrated"]
    s = report["settings"]
    cat = s.get("cat", {})
    budget = f"rho={cat.get('rho')}" if cat.get("rho") is not None else f"thresholds={cat.get('thresholds')}"
    lines = [
        "# CAT vs uniform tokenization: A/B report",
        "",
        f"- model: `{report['model_id']}` ({report['dtype']}), device: {report['device']}",
        f"- {s.get('num_frames')} frames at {s.get('height')}x{s.get('width')}, {s.get('steps')} steps, "
        f"guidance {s.get('guidance_scale')}, seeds {s.get('seeds')}",
        f"- CAT: source={cat.get('source')}, {budget}, warm-up {cat.get('warmup_steps')} steps "
        f"({cat.get('warmup_tokens')} tokens), refresh every {cat.get('refresh_every')}, schedule {cat.get('schedule') or 'none'}",
        f"- LoRAs: {[(lo.get('path'), lo.get('weight')) for lo in s.get('loras', [])] or 'none'}",
        f"- LPIPS: calibrated ({report['lpips_note']})" if calibrated
        else f"- **LPIPS is uncalibrated**: {report['lpips_note'].removeprefix('uncalibrated: ')}",
        f"- peak memory: {report.get('memory_kind', '-')}",
        "- speedup = s/step uniform / s/step CAT (denoising steps, allocation work included), mean over clips x seeds;",
        "  step-median = median over every paired step (the arms run in lockstep) of uniform / CAT step time;",
        "  ideal = the cost model's speedup for the same token counts (cat.cost).",
        "",
        "## Per redundancy level",
        "",
        *level_table(report["levels"], calibrated),
        "",
    ]
    quality = quality_table(report["levels"], report.get("metrics", {}))
    if quality:
        flags = ", ".join(f"{m['label']}: {'calibrated' if m['calibrated'] else UNCALIBRATED}"
                          for m in report["metrics"].values())
        lines += ["## Calibrated quality per level", "", f"Metrics ({flags}). PSNR 100 dB = identical.", "",
                  *quality, ""]
    mem = [e for e in report["levels"] if e["peak_memory_mb"]["uniform"] is not None]
    if mem:
        lines += ["| level | s/video uniform | s/video CAT | frames/s uniform | frames/s CAT | peak MB uniform | peak MB CAT |",
                  "|---|---|---|---|---|---|---|"]
        for e in report["levels"]:
            lines.append(
                f"| {e['level']} | {_f(e['s_per_video_uniform'])} | {_f(e['s_per_video_cat'])} "
                f"| {_f(e['frames_per_s_uniform'], 2)} | {_f(e['frames_per_s_cat'], 2)} "
                f"| {_f(e['peak_memory_mb']['uniform'], 0)} | {_f(e['peak_memory_mb']['cat'], 0)} |"
            )
        lines.append("")
    lines += oracle_table(report["levels"])
    if report.get("rho_sweep"):
        lines += ["## Speed / quality over rho", "",
                  f"| rho | tokens CAT | speedup | VMAF CAT vs uniform | {lpips_label(calibrated)} CAT vs uniform |",
                  "|---|---|---|---|---|"]
        for r in report["rho_sweep"]:
            lines.append(f"| {r['rho']:.2f} | {_f(r['tokens_cat'], 0)} | {_f(r['speedup'], 2)}x "
                         f"| {_f(r.get('vmaf_cat_vs_uniform'), 2)} | {_f(r['lpips_cat_vs_uniform'], 4)} |")
        lines.append("")
    art = report.get("artifacts", {})
    if art.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({rel})" for name, rel in art["plots"].items()] + [""]
    videos = [(c["level"], r.get("side_by_side")) for c in report["clips"] for r in c["runs"] if r.get("side_by_side")]
    if videos:
        lines += ["## Videos (reference | uniform | CAT)", ""] + [f"- {lv}: [{v}]({v})" for lv, v in videos] + [""]
    overlays = [(c["level"], c.get("overlay")) for c in report["clips"] if c.get("overlay")]
    if overlays:
        lines += ["## Allocation overlays (blue: coarse spatial, orange: coarse spatio-temporal)", ""]
        lines += [f"- {lv}: ![{lv}]({o})" for lv, o in overlays] + [""]
    if report["rejected"]:
        lines += ["## Rejected clips", ""] + [f"- `{r['path']}`: {r['reason']}" for r in report["rejected"]] + [""]
    return core_io.write_text_atomic(path, "\n".join(lines))
