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
    label = {a["name"]: a.get("label") or a["name"] for a in report["arms"]}
    names = list(label)
    b, candidates = names[0], names[1:]
    columns = ["level", "runs", *[f"tokens_{n}" for n in names], *[f"s_per_step_{n}" for n in names]]
    for c in candidates:
        columns += [f"speedup_{c}_vs_{b}", f"speedup_{c}_vs_{b}_ci95", f"{lp} {c} vs {b}"]
    columns += [f"{lp} vs ref {n}" for n in names]
    table = wandb.Table(columns=columns)
    for e in report["levels"]:
        row = [e["level"], e["runs"], *[e[f"tokens_{n}"] for n in names], *[e[f"s_per_step_{n}"] for n in names]]
        for c in candidates:
            row += [e[f"speedup_{c}_vs_{b}"], e[f"speedup_{c}_vs_{b}_ci95"], e[f"lpips_{c}_vs_{b}"]]
        table.add_data(*row, *[e["lpips_vs_reference"][n] for n in names])
    payload: dict = {"levels": table, "lpips_calibrated": int(report["lpips_calibrated"])}
    metrics = report.get("metrics", {})
    if any(e.get("quality") for e in report["levels"]):  # calibrated metrics, each with its flag
        qcols = ["level"]
        for key in QUALITY_KEYS:
            name = metrics.get(key, {}).get("label", key)
            qcols += [f"{name} {c} vs {b}" for c in candidates] + [f"{name} vs ref {n}" for n in names]
        qtable = wandb.Table(columns=qcols)
        for e in report["levels"]:
            q = e.get("quality") or {}
            row = [e["level"]]
            for key in QUALITY_KEYS:
                m = q.get(key) or {}
                row += [m.get(f"{c}_vs_{b}") for c in candidates] + [(m.get("vs_reference") or {}).get(n) for n in names]
            qtable.add_data(*row)
        payload["quality"] = qtable
        payload.update({f"calibrated/{key}": int(spec["calibrated"]) for key, spec in metrics.items()})
    for name, rel in report.get("artifacts", {}).get("plots", {}).items():
        payload[f"plots/{_key(name)}"] = wandb.Image(str(out_dir / rel), caption=f"{name} ({lp})")
    for clip in report["clips"]:
        for r in clip["runs"]:
            if r.get("side_by_side"):
                payload[f"videos/{_key(clip['level'])}"] = wandb.Video(str(out_dir / r["side_by_side"]),
                                                                 caption=" | ".join(["reference", *label.values()]))
    run.log(payload)
    run.summary.update({f"speedup_{c}_vs_{b}/{_key(e['level'])}": e[f"speedup_{c}_vs_{b}"]
                        for e in report["levels"] for c in candidates})
    run.finish()
