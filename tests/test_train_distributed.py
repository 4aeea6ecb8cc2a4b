"""Two CPU processes: DDP (gloo) and DeepSpeed ZeRO-2 each split the data between the ranks and
write one checkpoint (not one per rank). The ZeRO-2 run JIT-compiles DeepSpeed's shm op the first
time (~34 s, cached in ~/.cache/torch_extensions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.train_support import accelerate_launch, run_args
from train.checkpoint import list_checkpoints

pytest_plugins = ("tests.train_fixtures",)  # fixtures: style_set


def _check_run(out: Path, result, distributed_type: str) -> dict:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shards = [json.loads((out / "data_shards" / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen0, seen1 = shards[0]["windows"], shards[1]["windows"]
    total = shards[0]["train_windows"]
    # one epoch of 1-window batches: each rank sees half, no window twice, none left out
    assert len(seen0) == len(seen1) == total // 2
    assert not set(seen0) & set(seen1) and len(set(seen0) | set(seen1)) == total
    checkpoints = list_checkpoints(out / "checkpoints")
    assert [p.name for p in checkpoints] == [f"checkpoint-{total // 2:06d}"]
    assert [p.name for p in (out / "checkpoints").iterdir()] == [checkpoints[0].name]  # no temp or per-rank folders
    assert len(list((checkpoints[0] / "adapter").glob("*.safetensors"))) == 1
    results = json.loads((out / "results.json").read_text())
    assert results["distributed_type"] == distributed_type and results["num_processes"] == 2
    assert Path(results["lora"]["diffusers"]).is_file()
    return results


def _args(style_set: Path, tiny_cfg, out: Path, *extra: str) -> list[str]:
    return ["train.stage1", *run_args(style_set, tiny_cfg, out, "max_steps=5", "checkpoint.every=0", *extra)]


def test_ddp_two_cpu_processes(style_set: Path, tiny_cfg, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    result = accelerate_launch("configs/accelerate/cpu_ddp.yaml", _args(style_set, tiny_cfg, out),
                               env={"ACCELERATE_USE_CPU": "1"})
    results = _check_run(out, result, "MULTI_CPU")
    assert (Path(results["checkpoint"]) / "optimizer.bin").is_file()
    assert results["loss_after"] < results["loss_before"]  # the held-out loss is reduced across ranks


@pytest.mark.timeout(900)
def test_deepspeed_zero2_two_cpu_processes(style_set: Path, tiny_cfg, tmp_path: Path) -> None:
    out = tmp_path / "zero2"
    result = accelerate_launch("configs/accelerate/deepspeed_zero2.yaml",
                               _args(style_set, tiny_cfg, out, "heldout=false"), timeout=800)
    results = _check_run(out, result, "DEEPSPEED")
    assert (Path(results["checkpoint"]) / "pytorch_model").is_dir()  # DeepSpeed's own (sharded) state
