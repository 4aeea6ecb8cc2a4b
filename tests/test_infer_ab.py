"""The A/B runner end to end on the tiny model: report.json follows its schema, every table and plot
says "uncalibrated" when the AlexNet weights are absent, a bad clip is reported with its reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.config import ConfigError, load_config
from core.media import write_mp4
from core.schema import ABConfig
from infer.report_schema import REPORT_SCHEMA, validate

T, H, W = 9, 64, 64


def _clips(folder):
    """Two tiny clips at opposite redundancy levels, a broken one, and their grid.json."""
    folder.mkdir()
    y, x = np.mgrid[0:H, 0:W]
    flat = np.stack([(80 + 4 * y / H + 0 * x)] * 3, -1).astype(np.uint8)  # one code value per 16-px cell row
    write_mp4(np.stack([flat] * T), folder / "flat.mp4")
    rng = np.random.default_rng(0)
    write_mp4(rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8), folder / "busy.mp4")
    (folder / "broken.mp4").write_text("not a video")
    clips = [{"path": "flat.mp4", "level": "SI-low/TI-low"}, {"path": "busy.mp4", "level": "SI-high/TI-high"},
             {"path": "broken.mp4", "level": "SI-low/TI-low"}]
    (folder / "grid.json").write_text(json.dumps({"clips": clips}))
    return folder


@pytest.fixture(scope="module")
def ab_run(tmp_path_factory, tiny_cfg):
    """One small A/B with an empty torchvision cache (so LPIPS must be uncalibrated); plot labels captured."""
    import infer.plots as plots
    from infer.ab import run_ab

    root = tmp_path_factory.mktemp("ab")
    captured: list[str] = []
    real_save = plots._save

    def capture(fig, path):
        captured.extend(t.get_text() for ax in fig.axes for t in (ax.title, ax.yaxis.label))
        return real_save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "empty-torch-home"))
        mp.setattr(plots, "_save", capture)
        cfg = ABConfig(model=tiny_cfg, clips_dir=str(_clips(root / "clips")), height=H, width=W, num_frames=T,
                       steps=2, seeds=[0, 1], rho_sweep=[0.5], cpu_threads=1, output_dir=str(root / "out"))
        cfg.cat.source = "reference"
        report = run_ab(cfg, progress=False)
    return root / "out", report, captured


def test_report_json_validates_against_its_schema(ab_run):
    out, report, _ = ab_run
    data = json.loads((out / "report.json").read_text())
    assert validate(data, REPORT_SCHEMA) == []
    assert [e["level"] for e in data["levels"]] == ["SI-low/TI-low", "SI-high/TI-high"]
    flat, busy = data["levels"]
    assert flat["runs"] == busy["runs"] == 2  # one clip x two seeds each
    assert flat["tokens_cat"] < flat["tokens_uniform"] == busy["tokens_uniform"] == 3 * 4 * 4
    # noise everywhere: only latent frame 0 (the conditioning image: nothing moved against it) is
    # coarsened, its 4 blocks as tokens that restore the image's detail; the region-constant flat clip
    # keeps plain pooling (a tie chooses plain)
    assert busy["tokens_cat"] == busy["tokens_uniform"] - 4 * 3 and busy["detail_tokens_cat"] == 4
    assert flat["detail_tokens_cat"] == 0 and busy["detail_tokens_uniform"] == flat["detail_tokens_uniform"] == 0
    run = next(r for c in data["clips"] if c["level"] == "SI-high/TI-high" for r in c["runs"])
    assert run["cat"]["detail_tokens_per_step"] == [4, 4] and run["uniform"]["detail_tokens_per_step"] == [0, 0]
    assert 0 <= flat["lpips_cat_vs_uniform"]
    assert data["rho_sweep"][0]["rho"] == 0.5
    # perfect model (oracle): stock tokens land on x0, and so do detail tokens (the busy clip's frame 0)
    assert flat["oracle_latent_error"]["uniform"] <= 1e-5 and busy["oracle_latent_error"]["uniform"] <= 1e-5
    assert busy["oracle_latent_error"]["cat"] <= 1e-5
    assert flat["oracle_latent_error"]["cat"] >= flat["oracle_latent_error"]["uniform"]
    md = (out / "report.md").read_text()
    assert "perfect model (oracle): latent error CAT" in md
    busy_row = next(line for line in md.splitlines() if line.startswith("| SI-high/TI-high | 2 |"))
    assert "| detail tokens CAT |" in md and busy_row.split(" | ")[4] == "4"  # level, runs, tokens x2, detail
    for rel in (data["artifacts"]["plots"].values()):
        assert (out / rel).stat().st_size > 0
    videos = [r["side_by_side"] for c in data["clips"] for r in c["runs"] if r["side_by_side"]]
    assert len(videos) == 2 and all((out / v).is_file() for v in videos)
    assert (out / data["clips"][0]["overlay"]).is_file()
    # a schema violation is caught, so the validation above can fail
    broken = dict(data, levels=[dict(flat, speedup="fast")])
    del broken["lpips_calibrated"]
    errors = validate(broken)
    assert any("speedup" in e for e in errors) and any("lpips_calibrated" in e for e in errors)


def test_a_broken_clip_is_reported_with_its_reason(ab_run):
    _, report, _ = ab_run
    assert [r["path"].rsplit("/", 1)[-1] for r in report["rejected"]] == ["broken.mp4"]
    assert report["rejected"][0]["reason"]


def test_uncalibrated_label_everywhere_without_alexnet_weights(ab_run):
    out, report, captured = ab_run
    assert report["lpips_calibrated"] is False
    assert all(e["lpips_calibrated"] is False for e in report["levels"])
    assert "uncalibrated" in report["lpips_note"]
    md = (out / "report.md").read_text()
    table_header = next(line for line in md.splitlines() if line.startswith("| level | runs"))
    assert "LPIPS (uncalibrated)" in table_header and "**LPIPS is uncalibrated**" in md
    lpips_texts = [t for t in captured if "LPIPS" in t]  # plots now show calibrated VMAF; any LPIPS says so
    assert all("uncalibrated" in t for t in lpips_texts)


def test_config_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cat.source='oracle' is not one of"):
        load_config(ABConfig, None, ["cat.source=oracle"])
    with pytest.raises(ConfigError, match="num_frames=10 is not of the form 4k\\+1"):
        load_config(ABConfig, None, ["num_frames=10"])


def test_report_carries_calibrated_metrics_with_flags(ab_run):
    """VMAF, ST-LPIPS, PSNR, SSIM per level (CAT vs uniform, each arm vs reference), each flagged."""
    out, report, captured = ab_run
    assert {k: m["calibrated"] for k, m in report["metrics"].items()} == {
        "vmaf": True, "st_lpips": True, "psnr": True, "ssim": True, "lpips": False}
    assert report["metrics"]["st_lpips"]["label"] == "ST-LPIPS (alex, shift-tolerant, calibrated)"
    flat, busy = report["levels"]
    # both clips have coarse tokens (the busy one on its conditioning frame only), so the arms differ;
    # identical clips' scores (PSNR 100, ST-LPIPS 0, VMAF >= 95) are tested in test_infer_quality.py
    for level in (flat, busy):
        q = level["quality"]
        assert 0 < q["psnr"]["cat_vs_uniform"] < 100.0 and q["st_lpips"]["cat_vs_uniform"] > 0
        assert -1 <= q["ssim"]["cat_vs_uniform"] < 1 and q["vmaf"]["cat_vs_uniform"] is not None
    assert all(flat["quality"][k]["calibrated"] for k in ("vmaf", "st_lpips", "psnr", "ssim"))
    assert report["rho_sweep"][0]["vmaf_cat_vs_uniform"] is not None
    md = (out / "report.md").read_text()
    assert "## Calibrated quality per level" in md and "ST-LPIPS (alex, shift-tolerant, calibrated) CAT vs uniform" in md
    assert any("VMAF (calibrated)" in t for t in captured)  # plots use the calibrated metric
