"""The data view of a stage: which cached windows it trains on and how they are batched.

Windows come from `data.prepare`'s caches (`data.dataset.CachedWindows`) for the model being
trained. Batches hold same-shape windows (`BucketBatchSampler`, seeded per epoch), so the
order is a pure function of (seed, epoch): resuming skips the consumed batches and continues
exactly where the interrupted run was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from core.config import ConfigError
from core.models import Geometry
from core.schema import ModelConfig, PrepareConfig, TrainDataConfig

SYNTHETIC_CLIPS_DIR = "synthetic_clips"


class WindowView(Dataset):
    """A subset of a CachedWindows that keeps `shape_key` (the bucket sampler needs it)."""

    def __init__(self, windows: Any, indices: list[int]):
        self.windows, self.indices = windows, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.windows[self.indices[i]]

    def shape_key(self, i: int) -> tuple[int, int, int]:
        return self.windows.shape_key(self.indices[i])

    def window_ids(self) -> list[str]:
        return [self.windows.rows[i]["window_id"] for i in self.indices]


def is_prepared(prepared_dir: str | Path) -> bool:
    return (Path(prepared_dir).expanduser() / "prepare.json").is_file()


def check_has_windows(root: Path) -> None:
    """A prepared folder with no training window is refused in one line before the model loads."""
    from data.dataset import load_manifest_rows

    try:
        rows = load_manifest_rows(root)
    except FileNotFoundError as exc:
        raise ConfigError(f"data.prepared_dir: {exc}") from None
    if not any(r.get("split") == "train" for r in rows):
        raise ConfigError(f"data.prepared_dir '{root}' has 0 training windows ({len(rows)} in the manifest); "
                          "rerun python -m data.prepare (its rejects.jsonl says why each clip was not used)")


def ensure_prepared(cfg: TrainDataConfig, model: ModelConfig) -> None:
    """With `synthetic_if_missing`, build the synthetic style set and its cache on first use; either
    way the folder must hold training windows (checked before any model loads)."""
    root = Path(cfg.prepared_dir).expanduser()
    if is_prepared(root):
        check_has_windows(root)
        return
    if not cfg.synthetic_if_missing:
        raise ConfigError(f"data.prepared_dir '{root}' is not a prepared dataset (no prepare.json); run "
                          "python -m data.prepare input_dir=CLIPS output_dir=... first, or set "
                          "data.synthetic_if_missing=true for the built-in synthetic style set")
    from data.prepare import prepare
    from data.synth import make_style_set

    clips = root / SYNTHETIC_CLIPS_DIR
    make_style_set(clips, n_clips=cfg.synthetic_clips, frames=cfg.synthetic_frames + 3)
    prepare(PrepareConfig(input_dir=str(clips), output_dir=str(root), model=model, keyframes=True,
                          num_frames=cfg.synthetic_frames, resolution=cfg.synthetic_resolution, val_fraction=0.25))
    check_has_windows(root)


def load_windows(
    cfg: TrainDataConfig, model_id: str, split: str, keyframes: str, geometry: Geometry | None = None
) -> WindowView:
    """The split's windows for this model (complexity maps on `geometry`'s grid; None = the last
    prepare's family), filtered by the keyframe policy (include | exclude | only)."""
    from data.dataset import CachedWindows

    try:
        windows = CachedWindows(Path(cfg.prepared_dir).expanduser(), model_id=model_id, split=split, geometry=geometry)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"data.prepared_dir: {exc}") from exc
    keep = []
    for i, row in enumerate(windows.rows):
        single = row.get("kind") == "keyframe"
        if keyframes == "include" or (keyframes == "only") == single:
            keep.append(i)
    if split == "val" and cfg.val_limit:
        keep = keep[: cfg.val_limit]
    if not keep:
        raise ConfigError(f"data.prepared_dir '{cfg.prepared_dir}' has no {split} windows for model '{model_id}' "
                          f"with keyframes={keyframes}")
    return WindowView(windows, keep)


def make_loader(view: WindowView, cfg: TrainDataConfig, seed: int) -> tuple[DataLoader, Any]:
    """(DataLoader, its bucket batch sampler); the caller sets the sampler's epoch."""
    from data.dataset import BucketBatchSampler, collate_windows

    sampler = BucketBatchSampler(view, batch_size=cfg.batch_size, shuffle=True, seed=seed)
    # its own generator: creating an iterator draws a worker seed, which must not come from the
    # global RNG (a resumed run creates its iterator at a different point of that stream)
    loader = DataLoader(view, batch_sampler=sampler, collate_fn=collate_windows, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler
