"""The quality bound per redundancy level: what a CAT allocation itself gives up, in pixels.

    python -m infer.bound --config configs/bound.yaml [clips_dir=DIR] output_dir=DIR

With random weights no generated video means anything, so this measures the allocation with the
model taken out: the clip a perfect model reaches under it (`infer.bound_map.bound_clip`: coarse
tokens' regions replaced by their pooled content) against the clip itself, with calibrated metrics
(VMAF on every frame, ST-LPIPS on a frame subsample, PSNR, SSIM). Each budget (rho values and the
threshold default) is also rendered with a content-blind allocation of the same token counts, so
the table says both what a budget costs and whether placing tokens by content is worth it.
Image-to-video: each clip's first frame is the conditioning image, so CAT's maps are read with
`reference=True` and a coarse token may restore that frame's sub-token detail (`Allocation.detail`,
exact on static regions). The blind control stays content-blind: regular placement, plain pooling.
Writes bound.json (one row per clip x budget), report.md and plots/bound.png under output_dir.
"""

from __future__ import annotations

import ctypes
import datetime
import hashlib
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import OmegaConf

from cat.allocation import Allocation
from cat.api import detail_tokens
from cat.complexity import clip_si_ti, region_complexity
from cat.cost import ideal_speedup
from core.config import parse_cli, run_cli, to_yaml
from core.models import get_family
from core.schema import BoundConfig
from infer.bound_map import blind_allocation, bound_clip, full_resolution_complexity, make_allocation
from infer.clips import BenchClip, fit, list_clips, read_frames
from infer.metrics import ClipScorer, StLpipsMetric, VmafMetric, metric_specs

BOUND_VERSION = 1
FAMILY = get_family()  # the bound is measured on the default family's geometry and full-size cost dims
VMAF_TARGET = 95.0


def budgets(cfg: BoundConfig) -> list[dict]:
    """The budgets of every clip: each rho, then the threshold default (content decides the count)."""
    out = [{"budget": f"rho {r:g}", "rho": float(r), "thresholds": None} for r in cfg.rhos]
    thr = [float(x) for x in cfg.thresholds]
    return [*out, {"budget": f"thresholds [{thr[0]:g}, {thr[1]:g}]", "rho": None, "thresholds": thr}]


def default_grid(cfg: BoundConfig) -> Path:
    """The synthetic SI/TI grid at grid_height x grid_width, grid_frames (made once, then reused)."""
    from data.synth.grid import make_redundancy_grid

    folder = Path(cfg.grid_dir)
    manifest = folder / "grid.json"
    want = (cfg.grid_height, cfg.grid_width, cfg.grid_frames)
    if manifest.is_file():
        clips = json.loads(manifest.read_text()).get("clips", [])
        if len(clips) == 9 and all((c.get("height"), c.get("width"), c.get("frames")) == want for c in clips):
            return folder
    print(
        f"making the {cfg.grid_width}x{cfg.grid_height} x {cfg.grid_frames}-frame SI/TI grid in {folder} "
        "(once; later runs reuse it)",
        file=sys.stderr,
        flush=True,
    )
    make_redundancy_grid(
        folder, height=cfg.grid_height, width=cfg.grid_width, frames=cfg.grid_frames, fps=cfg.fps, seed=cfg.grid_seed
    )
    return folder


def bound_clips(cfg: BoundConfig) -> tuple[list[BenchClip], list[dict]]:
    """The clips and the rejected ones with reasons (the A/B's benchmark-set rules)."""
    folder = Path(cfg.clips_dir).expanduser() if cfg.clips_dir is not None else default_grid(cfg)
    view = SimpleNamespace(clips_dir=str(folder), levels=cfg.levels, max_clips=cfg.max_clips, num_frames=cfg.num_frames)
    return list_clips(view, folder)  # type: ignore[arg-type]


def read_clip(path: str, num_frames: int, size: tuple[int, int] | None = None) -> Any:
    """The first frames (T, H, W, 3) uint8 through the project's one reader (`infer.clips.read_frames`:
    decord, scaled decode when `size` is given, PyAV where decord fails)."""
    return read_frames(path, num_frames, *(size or (None, None)))


def clip_complexity(clip: BenchClip, reference: torch.Tensor, cfg: BoundConfig, grid: tuple) -> tuple[Any, str]:
    """Complexity maps on the generation grid and where they were read (full resolution or generation
    size), with `spatial_ref` filled (image-to-video: the clip's first frame is the conditioning image;
    at full resolution the first frame of the crop), so allocations may flag reference detail."""
    if cfg.complexity == "full":
        frames = read_clip(clip.path, cfg.num_frames)
        maps = full_resolution_complexity(frames, (cfg.height, cfg.width), grid)
        if maps is not None:
            return maps, f"full resolution {frames.shape[2]}x{frames.shape[1]}"
    maps = region_complexity(reference.unsqueeze(0), grid, geometry=FAMILY.geometry, reference=True)
    return maps, f"generation size {cfg.width}x{cfg.height}"


def _digest(video: torch.Tensor) -> str:
    return hashlib.sha256(video.contiguous().numpy().tobytes()).hexdigest()


def flat_or_static(maps: Any, thresholds: list[float]) -> bool:
    """Whether any cell (latent frames >= 1) is below the spatial or the temporal threshold."""
    sp, tp = maps.spatial[:, 1:], maps.temporal[:, 1:]
    return bool((sp < thresholds[0]).any() or (tp < thresholds[1]).any()) if sp.numel() else False


def run_clip(
    clip: BenchClip, cfg: BoundConfig, vmaf: VmafMetric, st_lpips: StLpipsMetric, progress: Any = None
) -> list[dict]:
    """One row per budget: token counts, ideal speedup, and the metrics of CAT's and the blind bound."""
    grid = FAMILY.geometry.patch_grid(cfg.num_frames, cfg.height, cfg.width)
    reference = fit(read_clip(clip.path, cfg.num_frames, (cfg.height, cfg.width)), cfg.height, cfg.width)[0]
    maps, source = clip_complexity(clip, reference, cfg, grid)
    si, ti = (float(x[0]) for x in clip_si_ti(reference.unsqueeze(0)))
    scorer = ClipScorer(reference, vmaf, st_lpips, cfg.st_lpips_frames, with_ssim=False)  # SSIM: 2x VMAF's CPU
    scored: dict[str, dict] = {}  # same bound clip (e.g. all-fine) -> same scores, computed once

    def score(allocation: Allocation) -> dict:
        video = bound_clip(reference, allocation, FAMILY.geometry)
        key = _digest(video)
        if key not in scored:
            scored[key] = scorer.score(video)
        return scored[key]

    rows = []
    for budget in budgets(cfg):
        alloc = make_allocation(maps, budget)
        blind = blind_allocation(alloc)
        cat_scores, blind_scores = score(alloc), score(blind)
        counts = alloc.counts()
        row = {
            "clip": Path(clip.path).name,
            "level": clip.level,
            "budget": budget["budget"],
            "rho": budget["rho"],
            "thresholds": budget["thresholds"],
            "tokens": alloc.num_tokens,
            "uniform_tokens": alloc.uniform_tokens,
            "keep_ratio": round(alloc.keep_ratio, 4),
            "tokens_fine": counts["fine"],
            "tokens_spatial": counts["spatial"],
            "tokens_spatiotemporal": counts["spatiotemporal"],
            "detail_tokens": detail_tokens(alloc),
            "blind_tokens": blind.num_tokens,
            "ideal_speedup": ideal_speedup(alloc.uniform_tokens, alloc.num_tokens, **FAMILY.cost_dims),
            "si": round(si, 3),
            "ti": round(ti, 3),
            "flat_or_static": flat_or_static(maps, list(cfg.thresholds)),
            "complexity_from": source,
        }
        for name in ("vmaf", "st_lpips", "psnr"):
            row[f"{name}_cat"], row[f"{name}_blind"] = cat_scores[name], blind_scores[name]
        rows.append(row)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(level=clip.level, budget=budget["budget"], vmaf=f"{cat_scores['vmaf'] or 0:.1f}")
    return rows


def targets(rows: list[dict]) -> dict:
    """The benchmark targets (checked and reported, not asserted): on every level with flat or
    static content, CAT's VMAF >= the blind allocation's at every budget that drops tokens; at the
    threshold default, VMAF >= 95 on every level."""
    misses_blind = [
        f"{r['level']} {r['budget']}: CAT {r['vmaf_cat']:.2f} < blind {r['vmaf_blind']:.2f}"
        for r in rows
        if r["flat_or_static"]
        and r["tokens"] < r["uniform_tokens"]
        and r["vmaf_cat"] is not None
        and r["vmaf_blind"] is not None
        and r["vmaf_cat"] < r["vmaf_blind"]
    ]
    thr = [r for r in rows if r["thresholds"] is not None]
    misses_95 = [
        f"{r['level']}: VMAF {r['vmaf_cat']:.1f}"
        for r in thr
        if r["vmaf_cat"] is not None and r["vmaf_cat"] < VMAF_TARGET
    ]
    return {
        "cat_ge_blind": {
            "met": not misses_blind,
            "misses": misses_blind,
            "rule": "VMAF CAT >= blind at every budget < 1 on every level with flat or static content",
        },
        "threshold_vmaf_ge_95": {
            "met": bool(thr) and not misses_95,
            "misses": misses_95,
            "rule": f"VMAF >= {VMAF_TARGET:g} at the threshold default on every level",
        },
    }


def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks (up to 32 MiB) for reuse instead of handing each back to the OS.

    Every metric call allocates frame-sized temporaries; by default glibc maps each block over
    128 KiB fresh and unmaps it on free, so the kernel zero-fills the same pages again and again.
    On this machine that was 40% of the bound's CPU as system time (one clip: 30 s system of 77 s
    with the default, 7 s of 55 s with these settings; docs/infer.md). Process-wide, so only the CLI
    calls it; False where glibc's mallopt is not available (nothing changes then)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc malloc.h
    return all(
        libc.mallopt(option, value) == 1
        for option, value in ((m_mmap_threshold, 32 << 20), (m_trim_threshold, 1 << 30), (m_top_pad, 256 << 20))
    )


def run_bound(cfg: BoundConfig, progress: bool = True) -> dict:
    """Score every clip x budget and write bound.json, report.md and the plot; returns the result."""
    from tqdm import tqdm

    from infer.bound_report import write_outputs

    start = time.perf_counter()
    threads = torch.get_num_threads()
    if cfg.cpu_threads:
        torch.set_num_threads(cfg.cpu_threads)
    try:
        clips, rejected = bound_clips(cfg)
        vmaf, st_lpips = VmafMetric(), StLpipsMetric()
        rows: list[dict] = []
        with tqdm(
            total=len(clips) * len(budgets(cfg)), desc="quality bound", unit="budget", disable=not progress
        ) as bar:
            for clip in clips:
                try:
                    rows.extend(run_clip(clip, cfg, vmaf, st_lpips, bar))
                except Exception as exc:  # one unreadable clip is reported with its reason, not fatal
                    reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    rejected.append({"path": clip.path, "reason": f"{type(exc).__name__}: {reason}"})
    finally:
        torch.set_num_threads(threads)
    result = {
        "version": BOUND_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"cpu ({cfg.cpu_threads or threads} threads)",
        "settings": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        "metrics": {k: v for k, v in metric_specs().items() if k != "ssim"},
        "cost_model": {"model": FAMILY.name, **FAMILY.cost_dims},
        "rows": rows,
        "rejected": rejected,
        "targets": targets(rows),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if rows:
        out = Path(cfg.output_dir)
        write_outputs(result, out)
        (out / "config.yaml").write_text(to_yaml(cfg))
    return result


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(BoundConfig, argv, default_config="configs/bound.yaml")
    keep_freed_memory()
    result = run_bound(cfg)
    if not result["rows"]:
        first = result["rejected"][0]["reason"] if result["rejected"] else "no clip in the set"
        print(
            f"error: infer.bound produced no rows ({len(result['rejected'])} clip(s) rejected: {first}); "
            "check clips_dir and levels",
            file=sys.stderr,
        )
        return 1
    from infer.bound_report import bound_table

    out = Path(cfg.output_dir)
    print("\n".join(bound_table(result["rows"])))
    for name, target in result["targets"].items():
        print(
            f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['rule']})"
            + (f"; misses: {'; '.join(target['misses'])}" if target["misses"] else "")
        )
    print(
        f"bound: {out / 'bound.json'}, {out / 'report.md'}, {out / 'plots' / 'bound.png'} ({result['seconds']:.0f} s)"
    )
    if result["rejected"]:
        print(f"{len(result['rejected'])} clip(s) rejected (reasons in report.md)", file=sys.stderr)
    return 0


__all__ = ["budgets", "main", "run_bound", "run_clip", "targets"]

if __name__ == "__main__":
    run_cli(main)
