"""The dataset card: a short Markdown summary of a prepared folder, with an SI/TI histogram."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from core.io import atomic_path

HISTOGRAM = "siti_hist.png"


def write_histogram(path: Path, si: list[float], ti: list[float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].hist(si, bins=20, color="#c0703a")
    axes[0].set(title="SI per window (ITU-T P.910)", xlabel="SI", ylabel="windows")
    axes[1].hist(ti, bins=20, color="#3a7ac0")
    axes[1].set(title="TI per window", xlabel="TI")
    axes[2].scatter(si, ti, s=10, color="#444")
    axes[2].set(title="SI vs TI", xlabel="SI", ylabel="TI")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return lines


def write_card(output_dir: Path, rows: list[dict], report, summary: dict, max_listed: int = 50) -> Path:
    """README.md in the output folder: counts, durations, buckets, SI/TI histogram, rejects."""
    windows = [r for r in rows if r["kind"] == "window"]
    clips = {r["source"]: r["source_duration"] for r in rows}
    lines = [
        "# Prepared dataset",
        "",
        f"Made by `python -m data.prepare` from `{summary['input_dir']}` (config in `prepare.yaml`).",
        "",
        f"- files found: {summary['files']}; clips used: {len(clips)} ({sum(clips.values()):.1f} s of source video)",
        f"- windows: {summary['windows']} x {summary['num_frames']} frames at {summary['fps']:g} fps "
        f"({len(windows) * summary['num_frames'] / summary['fps']:.1f} s); keyframes: {summary['keyframes']}",
        f"- split: train {summary['train_windows']}, val {summary['val_windows']} windows (by hash of clip path)",
        f"- model for the caches: `{summary['model_id']}`; resolution preset {summary['resolution']}",
        f"- this run: encoded {summary['encoded']}, served from cache {summary['cached']}",
        f"- rejects: {summary['rejects']} (`rejects.jsonl`); notices: {summary['notices']} (`notices.jsonl`)",
        "",
        "## Buckets",
        "",
    ]
    per_bucket = Counter(r["bucket"] for r in rows)
    lines += _table(("bucket (HxW)", "windows"), sorted(per_bucket.items()))
    if windows:
        write_histogram(output_dir / HISTOGRAM, [r["si"] for r in windows], [r["ti"] for r in windows])
        lines += ["", "## Spatial and temporal information", "", f"![SI/TI histogram]({HISTOGRAM})", ""]
        si = sorted(r["si"] for r in windows)
        ti = sorted(r["ti"] for r in windows)
        lines.append(
            f"SI min/median/max {si[0]:.1f} / {si[len(si) // 2]:.1f} / {si[-1]:.1f}; "
            f"TI {ti[0]:.1f} / {ti[len(ti) // 2]:.1f} / {ti[-1]:.1f} (luma 0..255, at bucket size)."
        )
    lines += ["", "## Rejects", ""]
    if report.rejects:
        lines += _table(
            ("file", "stage", "reason"),
            [
                (e["path"] + (f" [{e['window']}]" if "window" in e else ""), e["stage"], e["reason"])
                for e in report.rejects[:max_listed]
            ],
        )
        if len(report.rejects) > max_listed:
            lines.append(f"\n... and {len(report.rejects) - max_listed} more in rejects.jsonl")
    else:
        lines.append("None.")
    if report.notices:
        lines += ["", "## Notices (used after an adjustment)", ""]
        lines += _table(("file", "note"), [(e["path"], e["note"]) for e in report.notices[:max_listed]])
    path = output_dir / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path
