"""DeepSpeed at inference: Ulysses sequence parallel on 2 gloo ranks equals one process; ZeRO-Inference
gives the same output as the plain model; bad sizes fail with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from infer.parallel import ParallelContext, check_heads, gather_json, shard_items
from tests.infer_sp_inputs import forward, sp_inputs

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def test_two_process_sequence_parallel_equals_single_process(tmp_path):
    out = tmp_path / "sp.safetensors"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "infer_sp_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parallel = load_file(out)
    transformer, inputs = sp_inputs()
    with torch.no_grad():
        for mode in ("uniform", "cat"):
            single = forward(transformer, inputs, mode)
            assert parallel[mode].shape == single.shape
            torch.testing.assert_close(parallel[mode], single, atol=1e-5, rtol=1e-5)
    # the CAT output really differs from the uniform one (so both sequences were exercised)
    assert (parallel["cat"] - parallel["uniform"]).abs().max() > 1e-3


def test_heads_must_divide_the_sequence_parallel_size():
    check_heads(8, 4)
    with pytest.raises(ValueError, match=r"heads \(40\) to divide by the sequence-parallel size \(3\).*\[1, 2, 4, 5, 8"):
        check_heads(40, 3)


def test_zero_inference_matches_the_plain_transformer(tmp_path):
    """ZeRO stage-3 parameter offload (one process, CPU) changes where weights live, not the result."""
    script = (
        "import sys, torch; sys.path.insert(0, '.');"
        "from safetensors.torch import save_file;"
        "from tests.infer_sp_inputs import sp_inputs, forward;"
        "from infer.parallel import zero_inference;"
        "t, i = sp_inputs();"
        "z = zero_inference(t, 'cpu', 'fp32');"
        "assert z.blocks[0].attn1.to_q.weight.numel() == 0, 'parameters were not partitioned';"
        "out = {m: forward(z, i, m).contiguous() for m in ('uniform', 'cat')};"
        f"save_file(out, r'{tmp_path / 'zero.safetensors'}')"
    )
    proc = subprocess.run([sys.executable, "-c", f"import torch\nwith torch.no_grad():\n    exec({script!r})"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    zero = load_file(tmp_path / "zero.safetensors")
    transformer, inputs = sp_inputs()
    with torch.no_grad():
        for mode in ("uniform", "cat"):
            torch.testing.assert_close(zero[mode], forward(transformer, inputs, mode), atol=1e-5, rtol=1e-5)


def test_data_parallel_shards_clips_and_gathers_in_rank_order():
    clips = list(range(7))
    shards = [shard_items(clips, ParallelContext(rank=r, world_size=3, dp_rank=r, dp_size=3)) for r in range(3)]
    assert shards == [[0, 3, 6], [1, 4], [2, 5]]
    assert gather_json({"a": 1}, ParallelContext()) == [{"a": 1}]
