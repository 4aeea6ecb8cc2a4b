"""Per-level aggregation of A/B runs, and report.json / report.md (schema: infer/report_schema.py)."""

from __future__ import annotations

import math
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any

import core.io as core_io
from infer.arms import ArmRun, ClipResult, SeedRun, SweepRow
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


def _step_median(base: list[ArmRun], arm: list[ArmRun]) -> float:
    """Median over every paired step (same run, same step index) of baseline / arm step time; a
    steady-state figure that one-off work (CAT's first allocation) and load spikes barely move."""
    ratios = [a / b for u, c in zip(base, arm, strict=True)
              for a, b in zip(u.step_seconds, c.step_seconds, strict=False) if b > 0]
    return statistics.median(ratios) if ratios else base[0].s_per_step / arm[0].s_per_step


def quality_summary(runs: list[SeedRun], names: list[str]) -> dict:
    """Per calibrated metric (VMAF, ST-LPIPS, PSNR, SSIM): each candidate vs the baseline (mean, 95% CI)
    and each arm vs the reference (means), each with its `calibrated` flag."""
    specs = metric_specs()
    scored = [r.quality for r in runs if r.quality]
    b = names[0]
    out = {}
    for key in QUALITY_KEYS:
        entry: dict[str, Any] = {"calibrated": specs[key]["calibrated"]}
        for c in names[1:]:
            entry[f"{c}_vs_{b}"], entry[f"{c}_vs_{b}_ci95"] = _ci([q[f"{c}_vs_{b}"][key] for q in scored])
        entry["vs_reference"] = {arm: _mean([q["vs_reference"][arm][key] for q in scored]) for arm in names}
        out[key] = entry
    return out


def _speedups(runs: list[SeedRun], c: str) -> dict[str, Any]:
    """The speedup family of candidate `c` over the baseline, without its name (the caller names it)."""
    b = runs[0].baseline
    mean, ci = _ci([r.speedup(c) for r in runs])
    base, arm = [r.arms[b] for r in runs], [r.arms[c] for r in runs]
    return {"": mean, "_ci95": ci, "_median": statistics.median([r.speedup(c) for r in runs]),
            "_step_median": _step_median(base, arm),
            "_end_to_end": _mean([u.s_per_video / a.s_per_video for u, a in zip(base, arm, strict=True)])}


def aggregate_levels(clips: list[ClipResult], arms: list[dict[str, str]], calibrated: bool,
                     ideal: Any = None) -> list[dict]:
    """One entry per redundancy level: means over clips x seeds per arm, and each candidate arm against
    the baseline (the first arm) with 95% CIs for speedup and LPIPS. Schema 1's unsuffixed `speedup*`
    keys repeat the first candidate's.

    `ideal(tokens_baseline, tokens_candidate) -> float | None` adds the cost model's ideal speedup."""
    names = [a["name"] for a in arms]
    if not clips or not names:
        return []
    b, candidates = names[0], names[1:]
    by_level: dict[str, list[SeedRun]] = OrderedDict()
    for clip in sorted(clips, key=lambda c: level_order(c.level)):
        by_level.setdefault(clip.level, []).extend(clip.runs)
    levels = []
    for level, runs in by_level.items():
        if not runs:
            continue
        per_arm = {n: [r.arms[n] for r in runs] for n in names}
        tokens = {n: _mean([a.tokens for a in per_arm[n]]) for n in names}
        entry: dict[str, Any] = {"level": level, "runs": len(runs)}
        for field in ("tokens", "s_per_step", "s_per_video", "frames_per_s"):
            for n in names:
                entry[f"{field}_{n}"] = tokens[n] if field == "tokens" else _mean([getattr(a, field) for a in per_arm[n]])
        for n in names:  # mean coarse tokens per step that restore the reference's detail
            entry[f"detail_tokens_{n}"] = _mean([a.detail_tokens for a in per_arm[n]])
        for c in candidates:
            entry.update({f"speedup_{c}_vs_{b}{k}": v for k, v in _speedups(runs, c).items()})
            entry[f"lpips_{c}_vs_{b}"], entry[f"lpips_{c}_vs_{b}_ci95"] = _ci([r.lpips_vs_baseline.get(c) for r in runs])
            entry[f"ideal_speedup_{c}_vs_{b}"] = (ideal(tokens[b], tokens[c])
                                                  if ideal is not None and tokens[b] and tokens[c] else None)
        first = candidates[0]
        entry.update({f"speedup{k}": entry[f"speedup_{first}_vs_{b}{k}"]
                      for k in ("", "_ci95", "_median", "_step_median", "_end_to_end")})
        entry["ideal_speedup"] = entry[f"ideal_speedup_{first}_vs_{b}"]
        for field in ("lpips_vs_reference", "psnr_vs_reference", "peak_memory_mb"):
            entry[field] = {n: _mean([getattr(a, field) for a in per_arm[n]]) for n in names}
        entry["lpips_calibrated"] = calibrated
        entry["oracle_latent_error"] = {n: _mean([(r.oracle_latent_error or {}).get(n) for r in runs]) for n in names}
        if any(r.quality for r in runs):
            entry["quality"] = quality_summary(runs, names)
        levels.append(entry)
    return levels


def aggregate_sweep(clips: list[ClipResult], arms: list[dict[str, str]]) -> list[dict]:
    """Mean over clips of each (arm, rho) sweep row, in report.json's layout."""
    by_key: dict[tuple[str, float], list[SweepRow]] = {}
    for clip in clips:
        for row in clip.sweep:
            by_key.setdefault((row.arm, row.rho), []).append(row)
    b = arms[0]["name"] if arms else ""
    out = []
    for (arm, rho), rows in sorted(by_key.items()):
        mean = SweepRow(arm, rho, _mean([r.tokens for r in rows]), _mean([r.speedup for r in rows]),
                        _mean([r.lpips_vs_baseline for r in rows]), _mean([r.vmaf_vs_baseline for r in rows]))
        out.append(mean.to_json(b))
    return out


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


def _labels(arms: list[dict[str, str]]) -> tuple[list[str], dict[str, str]]:
    """(arm names, name -> label); the baseline first."""
    return [a["name"] for a in arms], {a["name"]: a.get("label") or a["name"] for a in arms}


def _per_arm(values: dict, names: list[str], digits: int) -> str:
    return " / ".join(_f(values.get(n), digits) for n in names)


def level_table(levels: list[dict], arms: list[dict[str, str]], calibrated: bool) -> list[str]:
    """The per-level markdown table (also printed by infer.bench): per arm, then each candidate vs the baseline;
    "detail tokens": a candidate's mean coarse tokens per step that restore the conditioning image's detail."""
    names, label = _labels(arms)
    b, lp = names[0], lpips_label(calibrated)
    slash = " / ".join(label[n] for n in names)
    head = ("| level | runs | " + " | ".join(f"tokens {label[n]}" for n in names) + " | "
            + " | ".join(f"detail tokens {label[c]}" for c in names[1:]) + " | "
            + " | ".join(f"s/step {label[n]}" for n in names) + " | "
            + " | ".join(f"speedup {label[c]} (95% CI) | step-median speedup {label[c]} | ideal {label[c]} "
                         f"| {lp} {label[c]} vs {label[b]}" for c in names[1:])
            + f" | {lp} vs ref {slash} | PSNR vs ref {slash} |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for e in levels:
        cells = [e["level"], str(e["runs"])]
        for n in names:
            ratio = e[f"tokens_{n}"] / e[f"tokens_{b}"] if n != b and e[f"tokens_{b}"] else None
            cells.append(_f(e[f"tokens_{n}"], 0) + (f" ({_f(ratio, 2)})" if n != b else ""))
        cells += [_f(e.get(f"detail_tokens_{c}"), 0) for c in names[1:]]  # absent in reports written before it
        cells += [_f(e[f"s_per_step_{n}"]) for n in names]
        for c in names[1:]:
            sp = f"speedup_{c}_vs_{b}"
            cells += [f"{_pm(e[sp], e[sp + '_ci95'])}x", f"{_f(e.get(sp + '_step_median'), 2)}x",
                      _f(e.get(f"ideal_{sp}"), 2), _pm(e[f"lpips_{c}_vs_{b}"], e[f"lpips_{c}_vs_{b}_ci95"], 4)]
        cells += [_per_arm(e["lpips_vs_reference"], names, 4), _per_arm(e["psnr_vs_reference"], names, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def oracle_table(levels: list[dict], arms: list[dict[str, str]]) -> list[str]:
    """Perfect model (oracle): what each arm's tokenization alone costs when the model is perfect."""
    names, label = _labels(arms)
    b = names[0]
    rows = [e for e in levels if any((e.get("oracle_latent_error") or {}).get(c) is not None for c in names[1:])]
    if not rows:
        return []
    lines = ["## Perfect model (oracle)", "",
             "Latent error mean |x - x0| when the transformer is replaced by the perfect denoiser of x0 = the",
             "reference clip's VAE latent (infer.oracle), same scheduler, steps and seed, each arm's own",
             "allocations replayed step by step: what the tokenization alone gives up (0 = nothing).", "",
             "| level | " + " | ".join(f"tokens {label[c]} / {label[b]}" for c in names[1:]) + " | "
             + " | ".join(f"perfect model (oracle): latent error {label[n]}" for n in [*names[1:], b]) + " |"]
    lines.append("|" + "---|" * (lines[-1].count("|") - 1))
    for e in rows:
        ratios = [_f(e[f"tokens_{c}"] / e[f"tokens_{b}"] if e[f"tokens_{b}"] else None, 2) for c in names[1:]]
        err = e["oracle_latent_error"]
        lines.append(f"| {e['level']} | " + " | ".join(ratios + [_f(err.get(n), 4) for n in [*names[1:], b]]) + " |")
    return lines + [""]


def quality_table(levels: list[dict], arms: list[dict[str, str]], metrics: dict) -> list[str]:
    """Calibrated metrics per level: each candidate vs the baseline, and each arm vs the reference clip."""
    names, label = _labels(arms)
    b = names[0]
    keys = [k for k in QUALITY_KEYS if k in metrics]
    if not keys or not any(e.get("quality") for e in levels):
        return []
    slash = " / ".join(label[n] for n in names)
    head = "| level | " + " | ".join(
        " | ".join(f"{metrics[k]['label']} {label[c]} vs {label[b]}" for c in names[1:])
        + f" | {metrics[k]['label']} vs ref {slash}" for k in keys) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    digits = {"vmaf": 2, "st_lpips": 4, "psnr": 2, "ssim": 4}
    for e in levels:
        q = e.get("quality") or {}
        cells = []
        for k in keys:
            m, d = q.get(k) or {}, digits.get(k, 3)
            cells += [_pm(m.get(f"{c}_vs_{b}"), m.get(f"{c}_vs_{b}_ci95"), d) for c in names[1:]]
            cells.append(_per_arm(m.get("vs_reference") or {}, names, d))
        lines.append(f"| {e['level']} | " + " | ".join(cells) + " |")
    return lines


def write_report_md(report: dict, path: Path) -> Path:
    """report.md: settings, the LPIPS calibration note, the per-level table, sweep, plots, videos, rejects."""
    calibrated = report["lpips_calibrated"]
    arms = report["arms"]
    names, label = _labels(arms)
    b = names[0] if names else ""
    others = " and ".join(label[n] for n in names[1:])
    s = report["settings"]
    cat = s.get("cat", {})
    budget = f"rho={cat.get('rho')}" if cat.get("rho") is not None else f"thresholds={cat.get('thresholds')}"
    lines = [
        f"# {others or 'CAT'} vs {label.get(b, 'uniform')} tokenization: A/B report",
        "",
        f"- model: `{report['model_id']}` ({report['dtype']}), device: {report['device']}",
        f"- {s.get('num_frames')} frames at {s.get('height')}x{s.get('width')}, {s.get('steps')} steps, "
        f"guidance {s.get('guidance_scale')}, seeds {s.get('seeds')}",
        f"- arms: {', '.join(label[n] for n in names)} (the first is the baseline)",
        f"- CAT: source={cat.get('source')}, {budget}, warm-up {cat.get('warmup_steps')} steps "
        f"({cat.get('warmup_tokens')} tokens), refresh every {cat.get('refresh_every')}, schedule {cat.get('schedule') or 'none'}",
        f"- LoRAs: {[(lo.get('path'), lo.get('weight')) for lo in s.get('loras', [])] or 'none'}",
        f"- LPIPS: calibrated ({report['lpips_note']})" if calibrated
        else f"- **LPIPS is uncalibrated**: {report['lpips_note'].removeprefix('uncalibrated: ')}",
        f"- peak memory: {report.get('memory_kind', '-')}",
        f"- speedup = s/step {label.get(b)} / s/step of the arm (denoising steps, allocation work included), mean over "
        "clips x seeds;",
        "  step-median = median over every paired step (the arms run in lockstep) of the same ratio of step times;",
        "  ideal = the cost model's speedup for the same token counts (cat.cost).",
        "",
        "## Per redundancy level",
        "",
        *(level_table(report["levels"], arms, calibrated) if names else []),
        "",
    ]
    quality = quality_table(report["levels"], arms, report.get("metrics", {})) if names else []
    if quality:
        flags = ", ".join(f"{m['label']}: {'calibrated' if m['calibrated'] else UNCALIBRATED}"
                          for m in report["metrics"].values())
        lines += ["## Calibrated quality per level", "", f"Metrics ({flags}). PSNR 100 dB = identical.", "",
                  *quality, ""]
    mem = [e for e in report["levels"] if e["peak_memory_mb"].get(b) is not None]
    if mem:
        head = ("| level | " + " | ".join(f"s/video {label[n]}" for n in names) + " | "
                + " | ".join(f"frames/s {label[n]}" for n in names) + " | "
                + " | ".join(f"peak MB {label[n]}" for n in names) + " |")
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for e in report["levels"]:
            cells = ([_f(e[f"s_per_video_{n}"]) for n in names] + [_f(e[f"frames_per_s_{n}"], 2) for n in names]
                     + [_f(e["peak_memory_mb"].get(n), 0) for n in names])
            lines.append(f"| {e['level']} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += oracle_table(report["levels"], arms) if names else []
    if report.get("rho_sweep"):
        lines += ["## Speed / quality over rho", "",
                  f"| arm | rho | tokens | speedup | VMAF vs {label[b]} | {lpips_label(calibrated)} vs {label[b]} |",
                  "|---|---|---|---|---|---|"]
        for r in report["rho_sweep"]:
            a = r["arm"]
            lines.append(f"| {label.get(a, a)} | {r['rho']:.2f} | {_f(r[f'tokens_{a}'], 0)} | {_f(r['speedup'], 2)}x "
                         f"| {_f(r.get(f'vmaf_{a}_vs_{b}'), 2)} | {_f(r.get(f'lpips_{a}_vs_{b}'), 4)} |")
        lines.append("")
    art = report.get("artifacts", {})
    if art.get("plots"):
        lines += ["## Plots", ""] + [f"![{name}]({rel})" for name, rel in art["plots"].items()] + [""]
    videos = [(c["level"], r.get("side_by_side")) for c in report["clips"] for r in c["runs"] if r.get("side_by_side")]
    if videos:
        lines += [f"## Videos (reference | {' | '.join(label[n] for n in names)})", ""]
        lines += [f"- {lv}: [{v}]({v})" for lv, v in videos] + [""]
    overlays = [(c["level"], c.get("overlay")) for c in report["clips"] if c.get("overlay")]
    if overlays:
        lines += ["## Allocation overlays (blue: coarse spatial, orange: coarse spatio-temporal)", ""]
        lines += [f"- {lv}: ![{lv}]({o})" for lv, o in overlays] + [""]
    if report["rejected"]:
        lines += ["## Rejected clips", ""] + [f"- `{r['path']}`: {r['reason']}" for r in report["rejected"]] + [""]
    return core_io.write_text_atomic(path, "\n".join(lines))
