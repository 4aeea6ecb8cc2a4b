"""Fixtures of the train tests (used as `pytest_plugins = ("tests.train_fixtures",)`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from filelock import FileLock

from core.schema import ModelConfig, PrepareConfig

# 8 clips of 12 frames at the tiny bucket, 9-frame windows (F' = 3: one CAT time pair) + keyframes.
RECIPE = {"n_clips": 8, "height": 64, "width": 112, "frames": 12, "num_frames": 9, "val_fraction": 0.3}


@pytest.fixture(scope="session")
def style_set(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: ModelConfig) -> Path:
    """A prepared folder (data.prepare output) of the synthetic cinematic style set, built once per
    test session and shared by xdist workers through a file lock."""
    from data.prepare import prepare
    from data.synth.style import make_style_set

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "train-style-set"
    with FileLock(str(root) + ".lock"):
        if not (root / "prepared" / "prepare.json").is_file():
            clips = make_style_set(root / "clips", n_clips=RECIPE["n_clips"], height=RECIPE["height"],
                                   width=RECIPE["width"], frames=RECIPE["frames"])
            prepare(PrepareConfig(input_dir=str(clips), output_dir=str(root / "prepared"), model=tiny_cfg,
                                  num_frames=RECIPE["num_frames"], resolution="64p", keyframes=True,
                                  val_fraction=RECIPE["val_fraction"]))
    return root / "prepared"


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores: one intra-op thread avoids spin-wait contention (10x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
