"""Shared pieces of the train tests: a tiny prepared style set (built once per test session,
shared by xdist workers through a file lock) and the overrides that point a run at it."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from filelock import FileLock

from core.schema import ModelConfig, PrepareConfig

ROOT = Path(__file__).resolve().parent.parent
# 8 clips of 12 frames at the tiny bucket, 9-frame windows (F' = 3: one CAT time pair) + keyframes.
RECIPE = {"n_clips": 8, "height": 64, "width": 112, "frames": 12, "num_frames": 9, "val_fraction": 0.3}


@pytest.fixture(scope="session")
def style_set(tmp_path_factory: pytest.TempPathFactory, tiny_cfg: ModelConfig) -> Path:
    """A prepared folder (data.prepare output) of the synthetic cinematic style set."""
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


def run_args(prepared: Path, model: ModelConfig, out: Path, *extra: str) -> list[str]:
    """Overrides for a quiet, fast run on the test style set."""
    return [
        f"data.prepared_dir={prepared}", "data.synthetic_if_missing=false", f"model.cache_dir={model.cache_dir}",
        f"output_dir={out}", "tracking.report_to=[]", "validation.at_end=false", "validation.every=0", *extra,
    ]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("PYTEST_XDIST_WORKER", None)
    return env


def accelerate_launch(args: list[str], timeout: float = 300, **launch: str) -> subprocess.CompletedProcess:
    """`accelerate launch` of a module with 2 CPU processes (extra launch flags as keyword args)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *args]
    return subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)


def read_wandb_history(run_file: Path) -> list[dict]:
    """History records of an offline W&B run file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    pos, block, pending, history = 7, 32768, b"", []
    records = []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    for raw in records:
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
    return history


@pytest.fixture
def one_thread():
    """Tiny models on 2 shared cores: one intra-op thread avoids spin-wait contention (10x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
