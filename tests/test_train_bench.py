"""`make bench-train`'s CAT section at tiny sizes: the rows and keys it reports (timings are not checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.models.wan21 import TINY_TRANSFORMER
from train.bench_cat import CAT_RHOS, cat_table, run_cat

pytest_plugins = ("tests.train_fixtures",)  # fixtures: one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def test_cat_rows_have_tokens_speedup_and_ideal(tmp_path: Path) -> None:
    result = run_cat(
        rounds=2, warmup=0, latent=(5, 8, 8), rank=2, out_dir=tmp_path, transformer_config=TINY_TRANSFORMER
    )
    rows = result["rows"]
    assert [r["rho"] for r in rows] == [1.0, *CAT_RHOS]
    assert rows[0]["tokens"] == 5 * 4 * 4  # uniform: the stock patchify
    assert rows[0]["tokens"] > rows[1]["tokens"] > rows[2]["tokens"]  # CAT at 0.5, then 0.25
    assert abs(rows[1]["tokens"] - 40) <= 3 and abs(rows[2]["tokens"] - 20) <= 3
    for row in rows[1:]:
        assert row["ideal_speedup"] > 1.0
        assert row["achieved_over_ideal"] == pytest.approx(row["speedup"] / row["ideal_speedup"], abs=2e-3)
        assert isinstance(row["meets_target"], bool)
    assert all(len(v) == 2 for v in result["ms_all"].values())
    assert "achieved/ideal" in cat_table(result)
