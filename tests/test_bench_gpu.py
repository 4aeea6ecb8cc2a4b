"""`make bench-gpu` without a GPU: the 14B-shaped model builds at the real dimensions (one layer) and CAT on it
matches the stock forward; the whole benchmark flow runs on CPU at tiny sizes; no CUDA -> one line, exit 0."""

from __future__ import annotations

import pytest
import torch

from cat.forward import cat_forward
from core.models.wan21 import TINY_TRANSFORMER
from train import bench_gpu, bench_shape

pytestmark = pytest.mark.usefixtures("one_thread")
pytest_plugins = ("tests.train_fixtures",)  # fixtures: one_thread


def test_real_14b_dimensions_one_layer_cat_matches_stock() -> None:
    model = bench_shape.build_model(1, "cpu", torch.float32)
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.attention_head_dim, cfg.ffn_dim) == (40, 128, 13824)
    assert model.condition_embedder.image_embedder.ff.net[0].proj.in_features == 1280
    assert model.blocks[0].attn2.add_k_proj.out_features == 5120 and cfg.text_dim == 4096
    inputs = bench_shape.make_inputs(model, (9, 64, 64), "cpu", torch.float32)  # grid (3, 4, 4): time pairs too
    with torch.inference_mode():
        stock = bench_shape.forward(model, inputs)
        assert stock.shape == inputs["hidden_states"][:, :16].shape
        assert torch.equal(cat_forward(model, *inputs.values(), allocation=None), stock)
        assert torch.equal(bench_shape.forward(model, inputs, bench_shape.layout_for((9, 64, 64), 1.0)), stock)
        half = bench_shape.layout_for((9, 64, 64), 0.5)
        assert half.num_tokens < 48
        out = bench_shape.forward(model, inputs, half)
    assert out.shape == stock.shape and torch.isfinite(out).all()


def test_extrapolation_is_linear_in_the_block_count() -> None:
    figures = bench_shape.extrapolate((1.0, 2.0), (1.5, 3.0), 2)
    assert figures["s_per_layer"] == 0.5 and figures["s_40_extrapolated"] == 20.5
    assert figures["peak_gib_40_extrapolated"] == 41.0
    assert bench_shape.extrapolate((1.0, None), (2.0, None), 3)["s_40_extrapolated"] == 20.5


def test_whole_flow_runs_on_cpu_at_tiny_sizes() -> None:
    shapes = {"480p x 33": (9, 32, 32), "720p x 81": (9, 32, 64), "720p x 33": (5, 32, 64)}
    result = bench_gpu.run("cpu", layers=2, repeats=1, config=TINY_TRANSFORMER, shapes=shapes)
    inference = result["inference"]
    assert [(r["shape"], r["arm"], r.get("rho")) for r in inference] == [
        (shape, arm, rho)
        for shape in ("480p x 33", "720p x 81")
        for arm, rho in [("stock", None)] + [("cat", rho) for rho in bench_gpu.RHOS]
    ]
    for row in inference:
        assert row["layers_built"] == 2 and isinstance(row["s_40_extrapolated"], float)  # timings: not checked
        if row["arm"] == "cat":
            assert row["ideal_speedup"] >= 1.0 and "achieved_over_ideal" in row
    assert [r["tokens"] for r in result["training"]] == ["uniform", "uniform", "CAT rho 0.5"]
    assert result["training"][2]["token_count"] < result["training"][1]["token_count"]
    swap = result["fp8_block_swap"]
    for name in ("inference 720p x 81 stock", "training 480p x 33 uniform, stage-1 LoRA, gradient checkpointing"):
        rows = swap[name]["extrapolated"]
        assert [r["blocks_to_swap"] for r in rows] == list(bench_gpu.SWAP_TARGETS)
        assert all(isinstance(r["s_40_extrapolated"], float) for r in rows)
    assert "EXTRAPOLATED" in bench_gpu.table(result)


def test_without_cuda_one_line_and_exit_0(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main(["--json", "unused.json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "no CUDA GPU" in out
