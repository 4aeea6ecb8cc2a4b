"""The on-disk caches: safetensors shards keyed by content hash + model id + resolution.

Layout under `<output_dir>/cache/`:

    analysis-<code>-m<maps>/<geom>/<HxW>/<content>.safetensors  per-window complexity maps and SI/TI
    <model>/<HxW>/<content>.safetensors        per-window latents, I2V condition, CLIP image embeds
    <model>/text/<caption-hash>.safetensors    UMT5 embeddings of one caption (512 tokens)

`<content>` is the sha256 of the source file's bytes, `<model>` a file-safe model id, and each
tensor inside a shard is named `<window tag>/<field>` (the tag holds start, length and fps).
`<geom>` names the model family's geometry (`geometry_tag`: the complexity maps are laid out on its
patch grid), so the analysis is model-free within a geometry but Wan2.1 and Wan2.2 never share maps.
A different model id, geometry or bucket size is a different path, so nothing stale is ever read; an
edited clip has a new hash; `<code>` fingerprints cat/complexity.py, so a change to the
complexity statistic recomputes the (cheap) analysis instead of serving old maps; `<maps>`
(`MAPS_FORMAT`) is the layout of the `complexity` tensor: 2 = (spatial, temporal), 3 rows on
image-conditioned windows (+ spatial_ref, CAT's reference detail), so one folder never mixes the two.
Folders of MAPS_FORMAT 1 (`analysis-<code>/`, written before the third map) are still read, without
reference detail (`legacy_analysis_shard`). Shards are written to a temporary name and renamed (atomic).
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import core.io as core_io
from core.io import atomic_path
from core.models import Geometry

ANALYSIS = "analysis"
MODEL_FIELDS = ("latents", "condition", "image_embeds")
ANALYSIS_FIELDS = ("complexity", "si_ti")
CACHE_FORMAT = "1"  # bump when the meaning of a cached tensor changes
MAPS_FORMAT = "2"  # layout of the `complexity` maps (analysis folder name); 1: spatial, temporal only


def file_hash(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (the content part of every cache key)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def model_slug(model_id: str) -> str:
    """A file-safe folder name for a model id (with a short hash so distinct ids never merge)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.")[:60] or "model"
    return f"{clean}-{hashlib.sha256(model_id.encode()).hexdigest()[:8]}"


@functools.cache
def analysis_code() -> str:
    """Fingerprint of the code that computes the analysis tensors (cat/complexity.py)."""
    import cat.complexity

    return hashlib.sha256(Path(cat.complexity.__file__).read_bytes()).hexdigest()[:10]


def geometry_tag(geometry: Geometry) -> str:
    """What the complexity maps' grid depends on, as a folder name: e.g. `t4-s8-p1x2x2` (Wan2.1),
    `t4-s16-p1x2x2` (Wan2.2)."""
    return f"t{geometry.vae_t}-s{geometry.vae_s}-p{'x'.join(map(str, geometry.patch))}"


def analysis_shard(cache_root: Path, geometry: Geometry, bucket_name: str, content: str) -> Path:
    """The shard of a clip's complexity maps on `geometry`'s patch grid."""
    folder = cache_root / f"{ANALYSIS}-{analysis_code()}-m{MAPS_FORMAT}" / geometry_tag(geometry) / bucket_name
    return folder / f"{content[:32]}.safetensors"


def legacy_analysis_shard(cache_root: Path, geometry: Geometry, bucket_name: str, content: str) -> Path:
    """The same shard as written before MAPS_FORMAT 2 (maps: spatial, temporal; no reference map)."""
    folder = cache_root / f"{ANALYSIS}-{analysis_code()}" / geometry_tag(geometry) / bucket_name
    return folder / f"{content[:32]}.safetensors"


def model_shard(cache_root: Path, model_id: str, bucket_name: str, content: str) -> Path:
    return cache_root / model_slug(model_id) / bucket_name / f"{content[:32]}.safetensors"


def text_shard(cache_root: Path, model_id: str, caption: str) -> Path:
    return cache_root / model_slug(model_id) / "text" / f"{text_hash(caption)[:32]}.safetensors"


def shard_keys(path: Path) -> set[str]:
    """Tensor names in a shard; empty if it does not exist or is unreadable (then it is rebuilt)."""
    if not path.is_file():
        return set()
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("format") != CACHE_FORMAT:
                return set()
            return set(handle.keys())
    except Exception:  # a torn or foreign file is treated as absent
        return set()


def has_window(keys: set[str], tag: str, fields: tuple[str, ...]) -> bool:
    return all(f"{tag}/{name}" in keys for name in fields)


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def save_shard(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Write a shard atomically (temporary file in the same folder, then rename)."""
    metadata = {"format": CACHE_FORMAT, **(meta or {})}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def merge_into_shard(path: Path, new: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    """Add tensors to a shard, keeping what it already holds (other window settings of the same clip)."""
    if not new:
        return
    tensors = {k: v for k, v in load_shard(path).items() if k not in new} if shard_keys(path) else {}
    tensors.update(new)
    save_shard(path, tensors, meta)


def read_window(path: Path, tag: str, fields: tuple[str, ...]) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(f"{tag}/{name}") for name in fields}


def write_json_atomic(path: Path, payload: object) -> None:
    """Cache metadata: non-JSON values (paths, numpy scalars) are written as strings."""
    core_io.write_json_atomic(path, payload, default=str)
