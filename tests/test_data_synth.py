"""data.synth: the SI/TI grid lands in its bands (checked against siti-tools), is bit-identical per seed,
its flat+static level is really flat and static; the style set carries a measurable look."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from siti_tools.siti import SiTiCalculator

from cat.complexity import region_complexity
from core.models.wan21 import patch_grid
from data.synth import (
    SI_BANDS,
    TI_BANDS,
    load_grid,
    look_metrics,
    make_neutral_set,
    make_redundancy_grid,
    make_style_set,
)
from data.synth.__main__ import main as synth_main
from data.synth.style import summarize
from data.writer import decode_all

# Small frames keep the suite fast; band membership is still meaningful because the texture is sized in
# pixels and the amplitudes are calibrated against the measured statistic at the requested size (UHD
# generation asserts the same bands on every run; measured UHD values are in docs/data.md).
H, W, T = 144, 256, 17


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, list[dict]]:
    path = make_redundancy_grid(tmp_path_factory.mktemp("grid"), height=H, width=W, frames=T, seed=0, progress=False)
    return path, load_grid(path)


def reference_si_ti(frames: np.ndarray) -> tuple[float, float]:
    """P.910 SI/TI from siti-tools' reference functions on the decoded luma (BT.601)."""
    luma = frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    si = max(SiTiCalculator.si(y) for y in luma)
    ti = max([SiTiCalculator.ti(luma[i], luma[i - 1]) for i in range(1, len(luma))] or [0.0])
    return si, ti


def test_grid_clips_land_in_their_bands(grid):
    path, clips = grid
    meta = json.loads(path.read_text())
    assert len(clips) == 9 and meta["seed"] == 0
    assert {c["level"] for c in clips} == {f"SI-{s}/TI-{t}" for s in SI_BANDS for t in TI_BANDS}
    for clip in clips:
        frames = decode_all(clip["path"])
        assert frames.shape == (T, H, W, 3) and (clip["height"], clip["width"], clip["frames"]) == (H, W, T)
        si, ti = reference_si_ti(frames)
        assert si == pytest.approx(clip["si"], abs=0.01) and ti == pytest.approx(clip["ti"], abs=0.01)
        lo, hi = SI_BANDS[clip["si_band"]]
        assert lo <= si < hi, (clip["level"], si)
        lo, hi = TI_BANDS[clip["ti_band"]]
        assert lo <= ti < hi, (clip["level"], ti)
        assert Path(clip["first_frame"]).is_file()
    assert meta["bands"]["si"]["high"][1] is None  # open upper end, valid JSON


def test_grid_lands_in_its_bands_at_tiny_sizes(tmp_path):
    """64x64 x 9 frames is the A/B runner's default size: light sizes have pixel floors for it."""
    for clip in load_grid(make_redundancy_grid(tmp_path, height=64, width=64, frames=9, progress=False)):
        si, ti = reference_si_ti(decode_all(clip["path"]))
        assert SI_BANDS[clip["si_band"]][0] <= si < SI_BANDS[clip["si_band"]][1], (clip["level"], si)
        assert TI_BANDS[clip["ti_band"]][0] <= ti < TI_BANDS[clip["ti_band"]][1], (clip["level"], ti)


def test_flat_static_level_is_flat_and_static_per_region(grid):
    _, clips = grid
    by_level = {c["level"]: c for c in clips}

    def cells(level: str):
        frames = torch.from_numpy(decode_all(by_level[level]["path"])).permute(3, 0, 1, 2).unsqueeze(0)
        return region_complexity(frames, patch_grid(T, H, W))

    flat, busy = cells("SI-low/TI-low"), cells("SI-high/TI-high")
    assert by_level["SI-low/TI-low"]["si"] < 5 and by_level["SI-low/TI-low"]["ti"] < 0.5
    # every cell of the flat+static clip is far simpler than a typical cell of the busiest clip
    assert flat.spatial.max() < 0.1 * busy.spatial.median()
    assert flat.temporal.max() < 0.1 * busy.temporal[:, 1:].median()


def _file_digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mp4"))}


def test_grid_is_bit_identical_for_a_seed(grid, tmp_path):
    path, clips = grid
    subset = [("high", "high")]
    again = make_redundancy_grid(tmp_path / "again", height=H, width=W, frames=T, seed=0, progress=False, levels=subset)
    other = make_redundancy_grid(tmp_path / "other", height=H, width=W, frames=T, seed=1, progress=False, levels=subset)
    first = _file_digests(path.parent)
    for name, digest in _file_digests(again.parent).items():
        assert first[name] == digest  # same seed: same bytes (and so the same decoded frames)
    again_clips = {c["level"]: c for c in load_grid(again)}
    for clip in clips:
        if clip["level"] in again_clips:
            assert clip["frames_sha256"] == again_clips[clip["level"]]["frames_sha256"]
    assert not set(_file_digests(other.parent).values()) & set(first.values())  # another seed: other clips


def test_style_set_has_a_measurable_look_and_trigger_captions(tmp_path):
    styled = make_style_set(tmp_path / "style", n_clips=2, height=96, width=160, frames=9, seed=3)
    neutral = make_neutral_set(tmp_path / "neutral", n_clips=2, height=96, width=160, frames=9, seed=3)
    for i in range(2):
        s = look_metrics(decode_all(styled / f"style_{i:03d}.mp4"))
        n = look_metrics(decode_all(neutral / f"neutral_{i:03d}.mp4"))
        assert s["warmth"] > n["warmth"] + 20
        assert s["vignette"] > 1.2 * n["vignette"]
        assert s["letterbox"] == 1.0 and n["letterbox"] < 0.5
        assert s["grain"] > 1.5 * n["grain"]
        style_caption = (styled / f"style_{i:03d}.txt").read_text()
        neutral_caption = (neutral / f"neutral_{i:03d}.txt").read_text()
        assert style_caption.startswith("elturco style, ") and "elturco" not in neutral_caption
        assert style_caption.removeprefix("elturco style, ") == neutral_caption  # same scene, same words
    assert summarize(styled)["warmth"] > summarize(neutral)["warmth"]
    # the folder prepares as is: no stray file, trigger captions
    from core.config import load_config
    from core.schema import PrepareConfig
    from data.prepare import prepare

    cfg = load_config(
        PrepareConfig,
        "configs/data.yaml",
        [f"input_dir={styled}", f"output_dir={tmp_path / 'prep'}", "num_frames=9", "encode=false"],
    )
    summary = prepare(cfg)
    assert summary["rejects"] == 0 and summary["windows"] == 2


def test_cli_writes_style_set_and_rejects_bad_sizes(tmp_path, capsys):
    assert (
        synth_main(
            [
                "style",
                "--output_dir",
                str(tmp_path / "s"),
                "--n_clips",
                "1",
                "--height",
                "64",
                "--width",
                "96",
                "--frames",
                "5",
            ]
        )
        == 0
    )
    assert (tmp_path / "s" / "style_000.mp4").is_file() and (tmp_path / "s" / "metadata.jsonl").is_file()
    from core.config import run_cli

    with pytest.raises(SystemExit) as bad:
        run_cli(lambda: synth_main(["grid", "--output_dir", str(tmp_path / "g"), "--height", "33"]))
    assert bad.value.code == 2 and "must be even" in capsys.readouterr().err
