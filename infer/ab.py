"""A/B of CAT against uniform tokenization, per clip and per redundancy level.

    python -m infer.ab --config configs/ab.yaml [key=value ...]
    deepspeed --num_gpus N --module infer.ab --config configs/ab.yaml    # Ulysses sequence parallel
    torchrun --nproc_per_node N -m infer.ab deepspeed.sequence_parallel=1  # data parallel over clips

Each clip's first frame conditions the generation and the clip itself is the reference. Both
arms share conditioning, seeded noise, scheduler, LoRAs and settings; they differ only in the
tokenization of each step. Arms alternate order from seed to seed so slow drifts of a shared
machine do not favour one of them. Writes report.json (schema: infer/report_schema.py),
report.md, plots/, videos/ and overlays/ under output_dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.media import to_uint8_frames, write_mp4
from core.models import Components as WanComponents
from core.models import load_components, resolve_device
from core.schema import ABConfig, CatInferConfig
from infer.adapters import apply_loras
from infer.clips import BenchClip, list_clips, load_clip
from infer.metrics import LpipsMetric, VideoMetrics, load_lpips, metric_specs, psnr
from infer.oracle import ab_latent_errors
from infer.parallel import ParallelContext, SequenceParallel, gather_json, init_parallel, shard_items, zero_inference
from infer.policy import CatPolicy
from infer.report import aggregate_levels, write_report_json, write_report_md
from infer.report_schema import SCHEMA_VERSION
from infer.sampler import Conditioning, Denoising, UniformPolicy, decode, lockstep, prepare_conditioning


# ---------------------------------------------------------------- setup
def build_components(cfg: ABConfig) -> WanComponents:
    """Wan components (mid-size random transformer on request), LoRAs applied, ZeRO-Inference on request."""
    if cfg.model.cpu_offload:
        raise ConfigError("model.cpu_offload is for infer.generate; in the A/B use deepspeed.zero_inference=true")
    model_cfg = dataclasses.replace(cfg.model, cpu_offload=True) if cfg.deepspeed.zero_inference else cfg.model
    comp = load_components(model_cfg)
    if cfg.transformer == "midsize":
        from diffusers import WanTransformer3DModel

        from core.models.wan21 import MIDSIZE_TRANSFORMER

        torch.manual_seed(cfg.model.seed)
        comp.transformer = WanTransformer3DModel(**MIDSIZE_TRANSFORMER).to(comp.dtype).eval().requires_grad_(False)
        comp.model_id = f"{comp.model_id}+midsize-random"
    if cfg.scheduler != "model":
        comp.scheduler = make_scheduler(cfg.scheduler, cfg.flow_shift)
    if not cfg.deepspeed.zero_inference:
        comp.transformer.to(comp.device)
    apply_loras(comp.pipeline(), cfg.loras)
    if cfg.deepspeed.zero_inference:
        for module in (comp.vae, comp.text_encoder, comp.image_encoder):
            module.to(comp.device)
        comp.transformer = zero_inference(comp.transformer, cfg.deepspeed.offload, cfg.model.dtype)
    return comp


def make_scheduler(name: str, flow_shift: float) -> Any:
    """Wan's flow-matching schedulers: UniPC (the pipeline's default) or plain Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def ideal_speedup_fn(comp: WanComponents) -> Any:
    """tokens -> the cost model's ideal speedup for this model (None when cat.cost is unavailable)."""
    try:
        from cat.cost import ideal_speedup
    except ImportError:
        return None
    conf = comp.transformer.config
    d = conf.num_attention_heads * conf.attention_head_dim
    context = comp.family.context_tokens(comp)  # text (+ image) cross-attention tokens

    def ideal(tokens_uniform: float, tokens_cat: float) -> float | None:
        try:
            return float(ideal_speedup(tokens_uniform=tokens_uniform, tokens_cat=tokens_cat, dim=d, ffn_dim=conf.ffn_dim,
                                       context_tokens=context))
        except TypeError:
            return None

    return ideal


# ---------------------------------------------------------------- arms
def run_arms(comp: WanComponents, cond: Conditioning, policies: dict[str, Any], cfg: ABConfig, seed: int,
             ctx: ParallelContext, steps: int | None = None, progress: Any = None) -> dict[str, tuple[dict, Any, Any]]:
    """Generate with each policy from the same seed, the runs interleaved step by step (`lockstep`);
    per arm: its numbers, its decoded video and its denoise result."""
    runs = {name: Denoising(comp, cond, policy, steps=steps or cfg.steps, seed=seed, guidance_scale=cfg.guidance_scale)
            for name, policy in policies.items()}
    with SequenceParallel(comp.transformer, ctx.sp_group) if ctx.sp_size > 1 else contextlib.nullcontext():
        lockstep(list(runs.values()), progress)
    out = {}
    for name, run in runs.items():
        start = time.perf_counter()
        video = decode(comp, run.result.latents)
        s_video = cond.seconds + run.result.seconds + time.perf_counter() - start
        peak = run.peak_memory / 2**20 if comp.device.type == "cuda" else (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # CPU: KiB high-water mark of the process
        out[name] = ({
            "s_per_step": run.result.seconds / len(run.result.steps),
            "s_per_video": s_video,
            "frames_per_s": video.shape[2] / s_video,
            "tokens_per_step": run.result.tokens_per_step,
            "step_seconds": [st.seconds for st in run.result.steps],
            "peak_memory_mb": peak,
            "lpips_vs_reference": None,
            "psnr_vs_reference": None,
            "video": None,
        }, video, run.result)
    return out


def cat_policy(settings: CatInferConfig, cond: Conditioning, reference: torch.Tensor, grid: tuple) -> CatPolicy:
    return CatPolicy(settings, grid, cond.first_frame, reference.to(cond.first_frame.device))


# ---------------------------------------------------------------- one clip
def run_clip(comp: WanComponents, cfg: ABConfig, clip: BenchClip, lpips: LpipsMetric | None, ctx: ParallelContext,
             out_dir: Path, index: int, bars: dict, quality: VideoMetrics | None = None) -> dict:
    """Both arms for every seed (order alternating), metrics, side-by-side video, overlay, rho sweep."""
    reference = load_clip(clip, cfg.num_frames, cfg.height, cfg.width)
    cond = prepare_conditioning(comp, reference[:, :, 0], clip.prompt or cfg.prompt, cfg.num_frames,
                                cfg.negative_prompt, cfg.guidance_scale)
    grid = comp.family.geometry.patch_grid(cfg.num_frames, cfg.height, cfg.width)
    stem = f"{index:02d}_{clip.level.replace('/', '_')}"
    entry: dict[str, Any] = {"path": clip.path, "level": clip.level, "si": clip.si, "ti": clip.ti, "overlay": None,
                             "runs": []}
    first_uniform: tuple[dict, torch.Tensor] | None = None
    for j, seed in enumerate(cfg.seeds):
        names = ("uniform", "cat") if j % 2 == 0 else ("cat", "uniform")
        policies = {n: UniformPolicy(grid) if n == "uniform" else cat_policy(cfg.cat, cond, reference, grid) for n in names}
        arms = run_arms(comp, cond, policies, cfg, seed, ctx, progress=bars.get("steps"))
        (u, u_video, _), (c, c_video, c_result) = arms["uniform"], arms["cat"]
        run: dict[str, Any] = {"seed": seed, "uniform": u, "cat": c, "speedup": u["s_per_step"] / c["s_per_step"],
                               "lpips_cat_vs_uniform": None, "side_by_side": None}
        if lpips is not None:
            run["lpips_cat_vs_uniform"] = lpips.video_distance(c_video[0], u_video[0])
            for arm, video in ((u, u_video), (c, c_video)):
                arm["lpips_vs_reference"] = lpips.video_distance(video[0], reference[0])
                arm["psnr_vs_reference"] = psnr(video[0], reference[0])
        if quality is not None:  # calibrated metrics: VMAF, ST-LPIPS, PSNR, SSIM
            run["quality"] = quality.compare_arms(reference[0], u_video[0], c_video[0])
        if ctx.rank % ctx.sp_size == 0 and j == 0:
            if cfg.save_videos:
                frames = to_uint8_frames(torch.cat([reference[0], u_video[0], c_video[0]], dim=3))
                path = write_mp4(frames, out_dir / "videos" / f"{stem}_ref_uniform_cat.mp4", fps=cfg.fps)
                run["side_by_side"] = str(path.relative_to(out_dir))
                u["video"] = c["video"] = run["side_by_side"]
            entry["overlay"] = _overlay(reference, c_result, out_dir / "overlays" / f"{stem}.png", out_dir)
        if j == 0:
            first_uniform = (u, u_video)
            run["oracle_latent_error"] = ab_latent_errors(comp, reference, c_result.allocations, steps=cfg.steps,
                                                          seed=seed)
        entry["runs"].append(run)
        if bars.get("clips") is not None:
            bars["clips"].set_postfix(level=clip.level, speedup=f"{run['speedup']:.2f}x")
    if cfg.rho_sweep and first_uniform is not None:
        entry["rho_sweep"] = _rho_sweep(comp, cfg, cond, reference, grid, first_uniform, lpips, ctx, quality)
    return entry


def _overlay(reference: torch.Tensor, result: Any, path: Path, out_dir: Path) -> str | None:
    """PNG of the CAT run's last allocation over the reference frames (None if it stayed uniform)."""
    allocations = [a for _, a in result.allocations if a is not None]
    if not allocations:
        return None
    from cat.overlay import draw_allocation

    return str(draw_allocation(reference, allocations[-1], path).relative_to(out_dir))


def _rho_sweep(comp: WanComponents, cfg: ABConfig, cond: Conditioning, reference: torch.Tensor, grid: tuple,
               uniform: tuple[dict, torch.Tensor], lpips: LpipsMetric | None, ctx: ParallelContext,
               quality: VideoMetrics | None = None) -> list[dict]:
    """CAT at each rho of the sweep (first seed), against this clip's first uniform run."""
    u, u_video = uniform
    rows = []
    scorer = quality.scorer(u_video[0]) if quality is not None else None
    for rho in cfg.rho_sweep:
        settings = dataclasses.replace(cfg.cat, rho=rho)
        arm, video, _ = run_arms(comp, cond, {"cat": cat_policy(settings, cond, reference, grid)}, cfg, cfg.seeds[0],
                                 ctx)["cat"]
        rows.append({
            "rho": rho,
            "tokens_cat": sum(arm["tokens_per_step"]) / len(arm["tokens_per_step"]),
            "speedup": u["s_per_step"] / arm["s_per_step"],
            "lpips_cat_vs_uniform": lpips.video_distance(video[0], u_video[0]) if lpips is not None else None,
            "vmaf_cat_vs_uniform": scorer.score(video[0])["vmaf"] if scorer is not None else None,
        })
    return rows


# ---------------------------------------------------------------- the whole A/B
def _timing_warmup(comp: WanComponents, cfg: ABConfig, clips: list[BenchClip], ctx: ParallelContext) -> None:
    """One short untimed run of each arm on the first readable clip: lazy initialisation must not
    land in the first timing (an unreadable clip is skipped here and rejected in the main loop)."""
    grid = comp.family.geometry.patch_grid(cfg.num_frames, cfg.height, cfg.width)
    for clip in clips:
        try:
            reference = load_clip(clip, cfg.num_frames, cfg.height, cfg.width)
        except Exception:  # noqa: BLE001 - reported with its reason by run_ab
            continue
        cond = prepare_conditioning(comp, reference[:, :, 0], cfg.prompt, cfg.num_frames, cfg.negative_prompt,
                                    cfg.guidance_scale)
        steps = min(cfg.steps, cfg.cat.warmup_steps + 1)
        run_arms(comp, cond, {"uniform": UniformPolicy(grid), "cat": cat_policy(cfg.cat, cond, reference, grid)}, cfg,
                 cfg.seeds[0], ctx, steps=steps)
        return


def _sweep_rows(clips: list[dict]) -> list[dict]:
    """Mean over clips of each rho's sweep row."""
    by_rho: dict[float, list[dict]] = {}
    for clip in clips:
        for row in clip.pop("rho_sweep", []):
            by_rho.setdefault(row["rho"], []).append(row)
    out = []
    for rho, rows in sorted(by_rho.items()):
        lp = [r["lpips_cat_vs_uniform"] for r in rows if r["lpips_cat_vs_uniform"] is not None]
        vm = [r["vmaf_cat_vs_uniform"] for r in rows if r.get("vmaf_cat_vs_uniform") is not None]
        out.append({"rho": rho, "tokens_cat": sum(r["tokens_cat"] for r in rows) / len(rows),
                    "speedup": sum(r["speedup"] for r in rows) / len(rows),
                    "lpips_cat_vs_uniform": sum(lp) / len(lp) if lp else None,
                    "vmaf_cat_vs_uniform": sum(vm) / len(vm) if vm else None})
    return out


@contextlib.contextmanager
def cpu_threads(n: int, device: torch.device) -> Any:
    """torch's intra-op threads set to `n` for a CPU run, restored afterwards (0 = leave as is).
    On a busy 2-core machine tiny models run several times faster on 1 thread than on 2."""
    before = torch.get_num_threads()
    if n and device.type == "cpu":
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_ab(cfg: ABConfig, comp: WanComponents | None = None, progress: bool = True) -> dict:
    """Run the A/B and write its report; returns the report (on every rank; only rank 0 writes it)."""
    with cpu_threads(cfg.cpu_threads, comp.device if comp is not None else resolve_device(cfg.model.device)):
        return _run_ab(cfg, comp, progress)


def _run_ab(cfg: ABConfig, comp: WanComponents | None, progress: bool) -> dict:
    from tqdm import tqdm

    ctx = init_parallel(cfg.deepspeed.sequence_parallel or None)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    comp = comp or build_components(cfg)
    clips, rejected = list_clips(cfg, out_dir)  # none usable: the report still lists the rejects; main exits 1
    lpips = load_lpips()
    quality = VideoMetrics.load(cfg.st_lpips_frames)
    mine = shard_items(list(enumerate(clips)), ctx)
    show = progress and ctx.is_main
    if cfg.timing_warmup:
        _timing_warmup(comp, cfg, [c for _, c in mine] or clips, ctx)
    bars: dict[str, Any] = {}
    results = []
    with tqdm(mine, desc="A/B clips", unit="clip", disable=not show) as clip_bar, \
            tqdm(desc="denoising steps", unit="step", disable=not show, leave=False) as step_bar:
        bars.update(clips=clip_bar, steps=step_bar)
        for index, clip in clip_bar:
            try:
                results.append(run_clip(comp, cfg, clip, lpips, ctx, out_dir, index, bars, quality))
            except Exception as exc:  # one bad clip (unreadable, too short) is reported with its reason, not fatal
                rejected.append({"path": clip.path, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
    if ctx.distributed:  # data parallel: group leaders hold results; merge them on every rank
        gathered = gather_json({"clips": results if ctx.rank % ctx.sp_size == 0 else [], "rejected": rejected}, ctx)
        results = [c for part in gathered for c in part["clips"]]
        rejected = list({r["path"]: r for part in gathered for r in part["rejected"]}.values())
    report = build_report(cfg, comp, results, rejected, lpips.calibrated, lpips.note)
    if ctx.is_main:
        write_outputs(report, cfg, out_dir)
    return report


def build_report(cfg: ABConfig, comp: WanComponents, clips: list[dict], rejected: list[dict], calibrated: bool,
                 note: str) -> dict:
    sweep = _sweep_rows(clips)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_id": comp.model_id,
        "device": device_name(comp.device),
        "dtype": cfg.model.dtype,
        "lpips_calibrated": calibrated,
        "lpips_note": note,
        "metrics": metric_specs(calibrated, note),
        "memory_kind": "CUDA peak allocated per arm" if comp.device.type == "cuda"
        else "process peak RSS (CPU: a high-water mark over the whole run, not per arm)",
        "settings": OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True),
        "levels": aggregate_levels(clips, calibrated, ideal_speedup_fn(comp)),
        "clips": clips,
        "rejected": rejected,
        "artifacts": {},
    }
    if sweep:
        report["rho_sweep"] = sweep
    return report


def write_outputs(report: dict, cfg: ABConfig, out_dir: Path) -> None:
    """report.json, report.md, plots, config.yaml; W&B when enabled."""
    from infer.plots import plot_levels, plot_rho_curve

    plots = {"speedup and LPIPS per level": plot_levels(report["levels"], report["lpips_calibrated"],
                                                        out_dir / "plots" / "levels.png", report["device"])}
    if report.get("rho_sweep"):
        plots["speed/quality over rho"] = plot_rho_curve(report["rho_sweep"], report["lpips_calibrated"],
                                                         out_dir / "plots" / "rho_curve.png")
    report["artifacts"] = {"report_md": "report.md", "plots": {k: str(v.relative_to(out_dir)) for k, v in plots.items()}}
    write_report_json(report, out_dir / "report.json")
    write_report_md(report, out_dir / "report.md")
    (out_dir / "config.yaml").write_text(to_yaml(cfg))
    if cfg.wandb:
        from infer.tracking import log_report

        log_report(report, out_dir, cfg.wandb_project)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    args = [a for a in args if not a.startswith("--local_rank")]  # the deepspeed launcher appends it; env has it too
    cfg = parse_cli(ABConfig, args, default_config="configs/ab.yaml")
    report = run_ab(cfg)
    failure = no_result_error(report, Path(cfg.output_dir))
    if int(os.environ.get("RANK", "0")) == 0:
        out = Path(cfg.output_dir)
        from infer.report import level_table

        if failure:
            print(f"\n{failure}", file=sys.stderr)  # on a line of its own after the progress bars
            return 1
        print("\n".join(level_table(report["levels"], report["lpips_calibrated"])))
        print(f"report: {out / 'report.md'} and {out / 'report.json'}; videos: {out / 'videos'}")
        if report["rejected"]:
            print(f"{len(report['rejected'])} clip(s) rejected (reasons in report.md)", file=sys.stderr)
    return 1 if failure else 0


def no_result_error(report: dict, out_dir: Path) -> str | None:
    """The one-line error of an A/B in which no clip and no level produced a result, else None."""
    if report["levels"] or report["clips"]:
        return None
    rejected = report["rejected"]
    first = f"; first: {Path(rejected[0]['path']).name}: {rejected[0]['reason']}" if rejected else ""
    return (f"error: the A/B produced no result: no clip ran ({len(rejected)} rejected{first}); "
            f"reasons in {out_dir / 'report.md'}; check clips_dir and levels")


if __name__ == "__main__":
    run_cli(main)
