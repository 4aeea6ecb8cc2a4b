"""The reference map (CAT's reference detail) in prepared data: computed for image-conditioned
windows only, stored as the third complexity map, and folders prepared before it still train
(without reference detail, said once) until prepare is re-run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from data_helpers import write_clip
from safetensors.torch import save_file

from cat.complexity import region_complexity
from core.config import load_config
from core.models import get_family
from core.schema import PrepareConfig
from data import cache
from data.dataset import CachedWindows, load_manifest_rows
from data.encode import analyse
from data.prepare import prepare


def run(src: Path, out: Path, cache_dir: str, *extra: str) -> dict:
    overrides = [f"input_dir={src}", f"output_dir={out}", f"model.cache_dir={cache_dir}", "model.device=cpu", *extra]
    return prepare(load_config(PrepareConfig, "configs/data.yaml", overrides))


def static_textured_clip(frames: int = 9, size: int = 32) -> torch.Tensor:
    """(3, T, H, W) uint8: fixed noise texture everywhere, a bright square moving right on top."""
    g = torch.Generator().manual_seed(0)
    base = (torch.rand(3, 1, size, size, generator=g) * 120 + 60).expand(3, frames, size, size).clone()
    for t in range(frames):
        base[:, t, 8:16, 2 * t : 2 * t + 8] = 250
    return base.to(torch.uint8)


def test_the_third_map_is_the_spatial_statistic_against_frame_0():
    geometry = get_family("wan2.1-i2v").geometry
    video = static_textured_clip()
    plain, with_ref = analyse(video, geometry), analyse(video, geometry, reference=True)
    assert plain["complexity"].shape == (2, 3, 2, 2) and with_ref["complexity"].shape == (3, 3, 2, 2)
    assert torch.equal(with_ref["complexity"][:2], plain["complexity"])  # spatial, temporal unchanged
    maps = region_complexity(video[None], (3, 2, 2), geometry=geometry, reference=True)
    assert torch.equal(with_ref["complexity"][2], maps.spatial_ref[0])
    ref = with_ref["complexity"][2]
    assert torch.all(ref[0] == 0)  # frame 0 is the reference
    assert torch.all(ref[:, 1, 1] == 0) and torch.all(plain["complexity"][0][:, 1, 1] > 10)  # static texture: free
    assert ref[1:, 0].max() > 10  # where the square moved, the reference does not hold


def test_wan22_keyframe_windows_get_no_reference_map(tmp_path):
    """Wan2.2 takes a one-latent-frame window unconditioned (text to image): two maps; its
    multi-frame windows are image-conditioned: three. Wan2.1 conditions every window."""
    assert get_family("wan2.1-i2v").image_conditioned(1) and get_family("wan2.1-i2v").image_conditioned(3)
    assert not get_family("wan2.2-ti2v").image_conditioned(1) and get_family("wan2.2-ti2v").image_conditioned(2)
    src, out = tmp_path / "clips", tmp_path / "out"
    write_clip(src / "a.mp4", frames=6, height=64, width=64)
    run(
        src,
        out,
        "unused",
        "num_frames=5",
        "resolution=64p",
        "keyframes=true",
        "encode=false",
        "model.family=wan2.2-ti2v",
    )
    rows = {r["kind"]: r for r in load_manifest_rows(out)}
    geometry = get_family("wan2.2-ti2v").geometry
    maps = {
        kind: cache.read_window(
            cache.analysis_shard(out / "cache", geometry, r["bucket"], r["content_hash"]), r["tag"], ("complexity",)
        )["complexity"]
        for kind, r in rows.items()
    }
    assert maps["window"].shape[:2] == (3, 2) and maps["keyframe"].shape[:2] == (2, 1)


def _to_legacy_format(out: Path) -> int:
    """Rewrite a folder's maps as a prepare run before the third map wrote them: the shards under
    `analysis-<code>/` (no maps-format suffix) with (spatial, temporal) only. Returns windows written."""
    root = out / "cache"
    current = root / f"{cache.ANALYSIS}-{cache.analysis_code()}-m{cache.MAPS_FORMAT}"
    legacy = root / f"{cache.ANALYSIS}-{cache.analysis_code()}"
    count = 0
    for shard in current.rglob("*.safetensors"):
        tensors = cache.load_shard(shard)
        for key in tensors:
            if key.endswith("/complexity"):
                tensors[key] = tensors[key][:2].contiguous()
                count += 1
        target = legacy / shard.relative_to(current)
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(target), metadata={"format": cache.CACHE_FORMAT})
    shutil.rmtree(current)
    return count


def test_a_folder_prepared_before_the_reference_map_trains_as_before_until_prepared_again(tmp_path, tiny_cfg, capsys):
    src, out = tmp_path / "clips", tmp_path / "out"
    write_clip(src / "a.mp4", frames=6)
    write_clip(src / "b.mp4", frames=6, caption="a woman runs")
    small = ("num_frames=5", "resolution=32p")
    first = run(src, out, tiny_cfg.cache_dir, *small)
    assert first["encoded"] == 2 and CachedWindows(out)[0]["complexity"].shape[0] == 3
    assert _to_legacy_format(out) == 2
    capsys.readouterr()

    old = CachedWindows(out)  # still loads: the same spatial and temporal maps, no reference map
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(out) in err and "re-run prepare to enable reference detail" in err
    assert not old.reference_maps and all(old[i]["complexity"].shape[0] == 2 for i in range(len(old)))

    again = run(src, out, tiny_cfg.cache_dir, *small)  # only the maps are recomputed: the encodings are kept
    assert (again["analysed"], again["encoded"], again["texts_encoded"]) == (2, 0, 0)
    capsys.readouterr()
    new = CachedWindows(out)
    assert new.reference_maps and capsys.readouterr().err == ""
    for i in range(len(new)):
        assert torch.equal(new[i]["complexity"][:2], old[i]["complexity"])
        assert new[i]["complexity"].shape[0] == 3

    for folder in (out / "cache").glob(f"{cache.ANALYSIS}-*"):  # no maps of either format: refused as before
        shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match="run python -m data.prepare"):
        CachedWindows(out)
