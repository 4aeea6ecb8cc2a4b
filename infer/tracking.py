"""Weights & Biases logging of an A/B report (offline unless WANDB_MODE says otherwise)."""

from __future__ import annotations

from pathlib import Path

from infer.metrics import QUALITY_KEYS
from infer.report import lpips_label


def _key(name: str) -> str:
    """A W&B key part: '/' would nest folders ('SI-low/TI-low' -> 'SI-low_TI-low')."""
    return name.replace("/", "_").replace(" ", "_")


def log_report(report: dict, out_dir: Path, project: str) -> None:
    """The per-level table, the plots and the side-by-side videos as one W&B run in out_dir/wandb."""
    import wandb

    run = wandb.init(project=project, dir=str(out_dir), config=report["settings"], job_type="ab",
                     name=f"ab-{out_dir.name}")
    lp = lpips_label(report["lpips_calibrated"])
    columns = ["level", "runs", "tokens_uniform", "tokens_cat", "s_per_step_uniform", "s_per_step_cat", "speedup",
               "speedup_ci95", f"{lp} cat vs uniform", f"{lp} vs ref uniform", f"{lp} vs ref cat"]
    table = wandb.Table(columns=columns)
    for e in report["levels"]:
        table.add_data(e["level"], e["runs"], e["tokens_uniform"], e["tokens_cat"], e["s_per_step_uniform"],
                       e["s_per_step_cat"], e["speedup"], e["speedup_ci95"], e["lpips_cat_vs_uniform"],
                       e["lpips_vs_reference"]["uniform"], e["lpips_vs_reference"]["cat"])
    payload: dict = {"levels": table, "lpips_calibrated": int(report["lpips_calibrated"])}
    metrics = report.get("metrics", {})
    if any(e.get("quality") for e in report["levels"]):  # calibrated metrics, each with its flag
        qcols = ["level"]
        for key in QUALITY_KEYS:
            label = metrics.get(key, {}).get("label", key)
            qcols += [f"{label} cat vs uniform", f"{label} vs ref uniform", f"{label} vs ref cat"]
        qtable = wandb.Table(columns=qcols)
        for e in report["levels"]:
            q = e.get("quality") or {}
            row = [e["level"]]
            for key in QUALITY_KEYS:
                m = q.get(key) or {"cat_vs_uniform": None, "vs_reference": {"uniform": None, "cat": None}}
                row += [m["cat_vs_uniform"], m["vs_reference"]["uniform"], m["vs_reference"]["cat"]]
            qtable.add_data(*row)
        payload["quality"] = qtable
        payload.update({f"calibrated/{key}": int(spec["calibrated"]) for key, spec in metrics.items()})
    for name, rel in report.get("artifacts", {}).get("plots", {}).items():
        payload[f"plots/{_key(name)}"] = wandb.Image(str(out_dir / rel), caption=f"{name} ({lp})")
    for clip in report["clips"]:
        for r in clip["runs"]:
            if r.get("side_by_side"):
                payload[f"videos/{_key(clip['level'])}"] = wandb.Video(str(out_dir / r["side_by_side"]),
                                                                 caption="reference | uniform | CAT")
    run.log(payload)
    run.summary.update({f"speedup/{_key(e['level'])}": e["speedup"] for e in report["levels"]})
    run.finish()
