"""Helpers of the train tests: run overrides, subprocess launching, reading W&B offline runs.
Fixtures live in tests/train_fixtures.py (a pytest plugin of the train test modules)."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

from core.schema import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(config_file: str, module_args: list[str], env: dict[str, str] | None = None,
                      timeout: float = 400) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file X --num_processes 2 -m ...` on this machine's CPU."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config_file, "--num_processes", "2",
           "--main_process_port", str(free_port()), "-m", *module_args]
    return subprocess.run(cmd, cwd=ROOT, env={**subprocess_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


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
