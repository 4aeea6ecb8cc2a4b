"""A folder of clips -> windows, a manifest, encoder caches, rejects and a dataset card.

    python -m data.prepare --config configs/data.yaml input_dir=CLIPS output_dir=OUT [key=value ...]

Writes into OUT: `manifest/` (Hugging Face dataset, one row per window), `cache/` (see
data/cache.py), `rejects.jsonl`, `notices.jsonl`, `prepare.json` (summary) and `README.md`
(dataset card with `siti_hist.png`). Re-running on the same folder only encodes what is not
cached yet, so an interrupted run resumes. Exit code 1 only if no window at all was produced.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from tqdm import tqdm

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.schema import PrepareConfig
from data import cache
from data.buckets import make_buckets
from data.captions import METADATA_NAMES, find_metadata, load_metadata
from data.card import write_card
from data.encode import expected_model_id
from data.ingest import ClipIngest, Report
from data.video import VIDEO_EXTENSIONS

CAPTION_SUFFIXES = (".txt",)


def list_inputs(input_dir: Path, metadata: Path | None) -> tuple[list[Path], list[Path]]:
    """(video files, other files) under input_dir, sorted; caption sidecars and the metadata table
    are neither. Hidden files (.DS_Store, editor swap files) count as other files: they are reported."""
    videos, others = [], []
    for path in sorted(p for p in input_dir.rglob("*") if p.is_file()):
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            videos.append(path)
        elif path.suffix.lower() in CAPTION_SUFFIXES and any(path.with_suffix(e).exists() for e in VIDEO_EXTENSIONS):
            continue
        elif path == metadata or (path.parent == input_dir and path.name in METADATA_NAMES):
            continue
        else:
            others.append(path)
    return videos, others


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

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(rows).save_to_disk(str(tmp))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def write_jsonl(path: Path, entries: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp.replace(path)


def prepare(cfg: PrepareConfig) -> dict:
    """Run the whole ingest; returns the summary also written to prepare.json."""
    started = time.time()
    input_dir, output_dir = Path(cfg.input_dir).expanduser(), Path(cfg.output_dir).expanduser()
    if not input_dir.is_dir():
        raise ConfigError(f"input_dir '{input_dir}' is not a folder of clips")
    output_dir.mkdir(parents=True, exist_ok=True)
    cfg.input_dir = str(input_dir)
    metadata = find_metadata(input_dir, cfg.metadata_file)
    captions = load_metadata(metadata) if metadata else {}
    videos, others = list_inputs(input_dir, metadata)
    report = Report()
    for path in others:
        report.reject(
            path.relative_to(input_dir).as_posix(),
            f"not a video file (extension '{path.suffix or 'none'}'; expected {', '.join(VIDEO_EXTENSIONS)})",
            "listing",
        )
    model_id = expected_model_id(cfg.model) if cfg.encode else None
    components = {}

    def get_model():
        if "comp" not in components:
            from core.wan import load_components

            components["comp"] = load_components(cfg.model)
            if components["comp"].model_id != model_id:
                raise RuntimeError(f"model id {components['comp'].model_id} != expected {model_id}")
        return components["comp"]

    ingest = ClipIngest(
        cfg,
        make_buckets(cfg.resolution, cfg.aspect_ratios),
        captions,
        output_dir / "cache",
        model_id,
        get_model,
        report,
    )
    clips = [c for c in (ingest.plan(p) for p in tqdm(videos, desc="probe clips", unit="clip")) if c is not None]
    rows: list[dict] = []
    total = sum(len(c.windows) for c in clips)
    with tqdm(total=total, desc="decode+encode windows", unit="win") as bar:
        for clip in clips:
            try:
                rows += ingest.process(clip)
            except Exception as exc:  # one bad clip never aborts the run; the reason is kept
                report.reject(clip.rel, f"failed while processing: {type(exc).__name__}: {exc}", "process")
            bar.update(len(clip.windows))
    splits = assign_splits(sorted({r["source"] for r in rows}), cfg.val_fraction)
    for row in rows:
        row["split"] = splits[row["source"]]
    if rows:
        write_manifest(rows, output_dir / "manifest")
    else:  # never leave a previous run's manifest pointing at windows this run did not produce
        shutil.rmtree(output_dir / "manifest", ignore_errors=True)
    write_jsonl(output_dir / "rejects.jsonl", report.rejects)
    write_jsonl(output_dir / "notices.jsonl", report.notices)
    (output_dir / "prepare.yaml").write_text(to_yaml(cfg))
    summary = {
        "input_dir": str(input_dir),
        "model_id": model_id,
        "resolution": cfg.resolution,
        "num_frames": cfg.num_frames,
        "fps": cfg.fps,
        "files": len(videos) + len(others),
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
    }
    cache.write_json_atomic(output_dir / "prepare.json", summary)
    write_card(output_dir, rows, report, summary)
    return summary


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
    summary = prepare(cfg)
    print_summary(summary, cfg.output_dir)
    if summary["windows"] + summary["keyframes"] == 0:
        print("error: no window was produced; see rejects.jsonl for every file's reason")
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda: main())
