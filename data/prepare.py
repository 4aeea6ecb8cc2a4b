"""A folder of clips -> windows, a manifest, encoder caches, rejects and a dataset card.

    python -m data.prepare --config configs/data.yaml input_dir=CLIPS output_dir=OUT [key=value ...]

Writes into OUT: `manifest/` (Hugging Face dataset, one row per window), `cache/` (see
data/cache.py), `rejects.jsonl`, `notices.jsonl`, `prepare.json` (summary) and `README.md`
(dataset card with `siti_hist.png`). Re-running on the same folder only encodes what is not
cached yet, so an interrupted run resumes.

A run never destroys the previous dataset: the new manifest is written beside the old one and
swapped in only when the run produced windows. A run that produced none replaces nothing (exit 1;
its reports go to `failed_run/` when a dataset is already there). Problems with one clip become
rejects; anything else (config, model, unwritable output folder, disk, out of memory) stops the run
at once with one line: config and output-folder problems before any clip is read.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.io import atomic_path, write_text_atomic
from core.schema import PrepareConfig
from data import cache
from data.buckets import make_buckets
from data.captions import find_metadata, load_metadata
from data.card import write_card
from data.encode import expected_model_id
from data.ingest import ClipIngest, Report
from data.listing import list_inputs
from data.video import VIDEO_EXTENSIONS

FAILED_RUN = "failed_run"  # reports of a run that produced nothing, beside the dataset it did not replace


class PrepareStopped(Exception):
    """An error not about one clip (model, disk, memory) stopped the run; nothing was replaced."""


def check_output_dir(output_dir: Path) -> None:
    """The output folder exists (or is created) and takes a file; ConfigError in one line otherwise."""
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir '{output_dir}' is a file, not a folder; pass a folder for the dataset")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=".write-probe-"):
            pass
    except OSError as exc:
        raise ConfigError(
            f"output_dir '{output_dir}' is not writable ({exc.strerror or exc}); choose a folder you can write to"
        ) from None


def check_model(cfg: PrepareConfig) -> None:
    """Model settings that would fail on the first encode fail now, before any clip is read."""
    if not cfg.encode:
        return
    from core.models import get_family, resolve_device

    if cfg.model.path is not None:
        get_family(cfg.model.family).check_folder(Path(cfg.model.path).expanduser())
    resolve_device(cfg.model.device)


def split_score(rel_path: str) -> float:
    """A stable number in [0, 1) per clip: the train/val split never depends on run order."""
    return int(hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def assign_splits(sources: list[str], val_fraction: float) -> dict[str, str]:
    """Clip -> "train" | "val" by hash; with val_fraction > 0 and 2+ clips at least one is held out."""
    splits = {s: ("val" if split_score(s) < val_fraction else "train") for s in sources}
    if val_fraction > 0 and len(sources) > 1 and "val" not in splits.values():
        splits[min(sources, key=split_score)] = "val"
    if len(sources) > 1 and "train" not in splits.values():
        splits[max(sources, key=split_score)] = "train"
    return splits


def write_manifest(rows: list[dict], folder: Path) -> None:
    """Save rows as a Hugging Face dataset, replacing the previous manifest only once complete."""
    from datasets import Dataset

    with atomic_path(folder) as tmp:
        Dataset.from_list(rows).save_to_disk(str(tmp))


def write_jsonl(path: Path, entries: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(e) + "\n" for e in entries))


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole ingest; returns the summary (also written to prepare.json when windows came out).
    Raises ConfigError before any clip is read, PrepareStopped when a non-clip error stops the run."""
    started = time.time()
    input_dir, output_dir = Path(cfg.input_dir).expanduser(), Path(cfg.output_dir).expanduser()
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir '{input_dir}' is not a folder of clips")
    check_output_dir(output_dir)
    check_model(cfg)
    cfg.input_dir = str(input_dir)
    metadata = find_metadata(input_dir, cfg.metadata_file)
    captions = load_metadata(metadata) if metadata else {}
    listing = list_inputs(input_dir, metadata, output_dir)
    videos, others = listing.videos, listing.others
    report = Report()
    for path in others:
        report.reject(
            path.relative_to(input_dir).as_posix(),
            f"not a video file (extension '{path.suffix or 'none'}'; expected {', '.join(VIDEO_EXTENSIONS)})",
            "listing",
        )
    for path, reason in listing.broken:
        report.reject(path.relative_to(input_dir).as_posix(), reason, "listing")
    for path, why in listing.skipped:
        report.notice(path.relative_to(input_dir).as_posix() + "/", why)
    model_id = expected_model_id(cfg.model) if cfg.encode else None
    from core.models import get_family

    cell_px = get_family(cfg.model.family).geometry.cell_px  # bucket sizes are whole patch-grid cells
    components = {}

    def get_model():
        if "comp" not in components:
            from core.models import load_components

            components["comp"] = load_components(cfg.model)
            if components["comp"].model_id != model_id:
                raise RuntimeError(f"model id {components['comp'].model_id} != expected {model_id}")
        return components["comp"]

    ingest = ClipIngest(
        cfg,
        make_buckets(cfg.resolution, cfg.aspect_ratios, cell_px),
        captions,
        output_dir / "cache",
        model_id,
        get_model,
        report,
    )
    rows: list[dict] = []
    current = "-"
    try:  # clip problems are rejects inside ingest; whatever escapes is about the run, not one clip
        clips = []
        for path in tqdm(videos, desc="probe clips", unit="clip"):
            current = path.relative_to(input_dir).as_posix()
            clips.append(ingest.plan(path))
        clips = [c for c in clips if c is not None]
        total = sum(len(c.windows) for c in clips)
        with tqdm(total=total, desc="decode+encode windows", unit="win") as bar:
            for clip in clips:
                current = clip.rel
                rows += ingest.process(clip)
                bar.update(len(clip.windows))
    except ConfigError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise PrepareStopped(f"stopped at '{current}': {type(exc).__name__}: {text}") from exc
    splits = assign_splits(sorted({r["source"] for r in rows}), cfg.val_fraction)
    for row in rows:
        row["split"] = splits[row["source"]]
    summary = {
        "input_dir": str(input_dir),
        "model_id": model_id,
        "family": cfg.model.family,
        "resolution": cfg.resolution,
        "num_frames": cfg.num_frames,
        "fps": cfg.fps,
        "files": len(videos) + len(others) + len(listing.broken),
        "clips_used": len({r["source"] for r in rows}),
        "windows": sum(r["kind"] == "window" for r in rows),
        "keyframes": sum(r["kind"] == "keyframe" for r in rows),
        "train_windows": sum(r["split"] == "train" for r in rows),
        "val_windows": sum(r["split"] == "val" for r in rows),
        "buckets": sorted({r["bucket"] for r in rows}),
        "rejects": len(report.rejects),
        "notices": len(report.notices),
        "encoded": report.encoded,
        "analysed": report.analysed,
        "cached": report.cached,
        "texts_encoded": report.texts_encoded,
        "seconds": round(time.time() - started, 2),
        "reports": str(output_dir),
    }
    if not rows:  # a run that produced nothing replaces nothing
        if (output_dir / "manifest").exists() or (output_dir / "prepare.json").exists():
            summary["reports"] = str(output_dir / FAILED_RUN)
        _write_reports(Path(summary["reports"]), report, summary, cfg)
        return summary
    try:  # the new manifest is complete beside the old one before the swap
        write_manifest(rows, output_dir / "manifest")
    except OSError as exc:
        raise PrepareStopped(f"stopped writing the manifest: {type(exc).__name__}: {exc}") from exc
    shutil.rmtree(output_dir / FAILED_RUN, ignore_errors=True)
    _write_reports(output_dir, report, summary, cfg)
    cache.write_json_atomic(output_dir / "prepare.json", summary)
    write_card(output_dir, rows, report, summary)
    return summary


def _write_reports(folder: Path, report: Report, summary: dict, cfg: PrepareConfig) -> None:
    write_jsonl(folder / "rejects.jsonl", report.rejects)
    write_jsonl(folder / "notices.jsonl", report.notices)
    (folder / "prepare.yaml").write_text(to_yaml(cfg))
    if folder.name == FAILED_RUN:
        cache.write_json_atomic(folder / "summary.json", summary)


def print_summary(summary: dict, output_dir: str) -> None:
    print(
        f"prepared {summary['windows']} windows (+{summary['keyframes']} keyframes) from {summary['clips_used']} clips "
        f"of {summary['files']} files: train {summary['train_windows']}, val {summary['val_windows']}; "
        f"buckets {', '.join(summary['buckets']) or '-'}\n"
        f"encoded {summary['encoded']}, analysed {summary['analysed']}, cached {summary['cached']}, "
        f"texts {summary['texts_encoded']}; {summary['rejects']} rejects (rejects.jsonl), "
        f"{summary['notices']} notices (notices.jsonl); {summary['seconds']} s -> {output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(PrepareConfig, argv, default_config="configs/data.yaml")
    try:
        summary = prepare(cfg)
    except PrepareStopped as exc:
        print(f"error: data.prepare {exc}; nothing was replaced in {cfg.output_dir}", file=sys.stderr)
        return 1
    print_summary(summary, cfg.output_dir)
    if summary["windows"] + summary["keyframes"] == 0:
        print(
            f"error: no window was produced, nothing was replaced; every file's reason is in "
            f"{Path(summary['reports']) / 'rejects.jsonl'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
