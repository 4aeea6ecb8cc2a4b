"""Training reads prepared windows from the caches: no video decoding and no encoder in the loop.

    ds = CachedWindows("runs/prepared", split="train")
    loader = DataLoader(ds, batch_sampler=BucketBatchSampler(ds, batch_size=2), collate_fn=collate_windows)

Each item is a dict of float32 CPU tensors (`latents` (C,F',h,w), `condition`, `text_embeds`
(512,text_dim), `image_embeds` (N,image_dim), `complexity` (2|3,F',H',W') = spatial, temporal
[, spatial_ref on image-conditioned windows: CAT's reference detail]) plus
`caption` and `window_id` strings; Wan2.1: C 16, condition (20,F',h,w); Wan2.2: C 48, condition
the first latent frame (48,1,h,w), no image embeddings (N = 0).
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler

from core.models import Geometry, get_family
from data.cache import analysis_shard, legacy_analysis_shard, model_shard, read_window, shard_keys, text_shard

TENSOR_KEYS = ("latents", "condition", "text_embeds", "image_embeds", "complexity")
SPLITS = ("train", "val")


def read_prepare_info(prepared_dir: Path) -> dict:
    info = Path(prepared_dir) / "prepare.json"
    if not info.is_file():
        raise FileNotFoundError(
            f"'{prepared_dir}' is not a prepared dataset (no prepare.json); run python -m data.prepare"
        )
    return json.loads(info.read_text())


def load_manifest_rows(prepared_dir: Path) -> list[dict]:
    """The manifest (a Hugging Face dataset on disk) as a list of row dicts."""
    from datasets import load_from_disk

    folder = Path(prepared_dir) / "manifest"
    if not folder.is_dir():
        raise FileNotFoundError(f"no manifest in '{prepared_dir}'; run python -m data.prepare first")
    return list(load_from_disk(str(folder)))


class CachedWindows(Dataset):
    """Windows of a prepared folder with their cached encodings, for one model id and split."""

    def __init__(
        self,
        prepared_dir: str | Path,
        model_id: str | None = None,
        split: str | None = None,
        geometry: Geometry | None = None,
    ):
        """`model_id` / `geometry` (the family's, for the complexity maps' grid): None = those of the
        last prepare (prepare.json)."""
        self.root = Path(prepared_dir)
        info = read_prepare_info(self.root)
        self.model_id = model_id or info.get("model_id")
        self.geometry = geometry or get_family(info.get("family")).geometry
        if not self.model_id:
            raise ValueError(f"'{prepared_dir}' was prepared without encoding (encode=false): no cached latents")
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got '{split}'")
        cache = self.root / "cache"
        rows = [r for r in load_manifest_rows(self.root) if split is None or r["split"] == split]
        self.rows = rows
        self._paths = [
            (
                model_shard(cache, self.model_id, r["bucket"], r["content_hash"]),
                analysis_shard(cache, self.geometry, r["bucket"], r["content_hash"]),
                text_shard(cache, self.model_id, r["caption"]),
            )
            for r in rows
        ]
        missing = self._missing()
        self.reference_maps = True  # False: maps of a prepare run before the third map (no reference detail)
        if missing:
            self._fall_back_to_legacy_maps(cache)
            missing = self._missing()
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} window(s) have no cache for model '{self.model_id}' in '{cache}' "
                f"(first: {missing[0]}; or cat/complexity.py changed since); run python -m data.prepare with this model"
            )

    def _fall_back_to_legacy_maps(self, cache: Path) -> None:
        """Read maps written before the reference map existed (spatial, temporal) when they cover
        every window: training goes on as before, without reference detail, and says so once.
        All windows then come from the one format (a batch never mixes 2- and 3-map windows)."""
        current = self._paths
        self._paths = [
            (m, legacy_analysis_shard(cache, self.geometry, r["bucket"], r["content_hash"]), t)
            for r, (m, _, t) in zip(self.rows, current, strict=True)
        ]
        if self._missing():
            self._paths = current
            return
        self.reference_maps = False
        print(
            f"warning: '{self.root}' holds complexity maps without the reference map (prepared before reference "
            "detail): CAT tokens there use no reference detail; re-run prepare to enable reference detail "
            "(encodings are reused, only the maps are recomputed)",
            file=sys.stderr,
            flush=True,
        )

    def _missing(self) -> list[str]:
        """Window ids whose tensors are absent from their shards (each shard's index read once)."""
        keys: dict[Path, set[str]] = {}

        def has(path: Path, name: str) -> bool:
            if path not in keys:
                keys[path] = shard_keys(path)
            return name in keys[path]

        return [
            r["window_id"]
            for r, (m, a, t) in zip(self.rows, self._paths, strict=True)
            if not (has(m, f"{r['tag']}/latents") and has(a, f"{r['tag']}/complexity") and has(t, "text/embeds"))
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def shape_key(self, index: int) -> tuple[int, int, int]:
        """(frames, height, width) of a window: windows with the same key can share a batch."""
        row = self.rows[index]
        return row["num_frames"], row["height"], row["width"]

    def __getitem__(self, index: int) -> dict:
        row = self.rows[index]
        model_path, analysis_path, text_path = self._paths[index]
        item = read_window(model_path, row["tag"], ("latents", "condition", "image_embeds"))
        item["complexity"] = read_window(analysis_path, row["tag"], ("complexity",))["complexity"]
        item["text_embeds"] = read_window(text_path, "text", ("embeds",))["embeds"]
        out = {key: item[key].float() for key in TENSOR_KEYS}
        out["caption"] = row["caption"]
        out["window_id"] = row["window_id"]
        return out


def collate_windows(items: list[dict]) -> dict:
    """Stack same-size windows into a batch; a clear error if shapes differ (use BucketBatchSampler)."""
    batch: dict = {}
    for key in TENSOR_KEYS:
        shapes = {tuple(item[key].shape) for item in items}
        if len(shapes) > 1:
            raise ValueError(
                f"cannot batch windows with different '{key}' shapes {sorted(shapes)}; "
                "group them with data.dataset.BucketBatchSampler"
            )
        batch[key] = torch.stack([item[key] for item in items])
    batch["caption"] = [item["caption"] for item in items]
    batch["window_id"] = [item["window_id"] for item in items]
    return batch


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices whose windows share a shape, shuffled per epoch with a seed."""

    def __init__(
        self, dataset: CachedWindows, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False
    ):
        self.dataset, self.batch_size, self.shuffle, self.seed, self.drop_last = (
            dataset,
            batch_size,
            shuffle,
            seed,
            drop_last,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i in range(len(self.dataset)):
            groups[self.dataset.shape_key(i)].append(i)
        rng = random.Random(self.seed + self.epoch)
        batches = []
        for key in sorted(groups):
            idx = groups[key]
            if self.shuffle:
                rng.shuffle(idx)
            for b in range(0, len(idx), self.batch_size):
                chunk = idx[b : b + self.batch_size]
                if len(chunk) == self.batch_size or not self.drop_last:
                    batches.append(chunk)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches())

    def __len__(self) -> int:
        return len(self._batches())
