"""A/B of CAT against uniform tokenization, per clip and per redundancy level.

    python -m infer.ab --config configs/ab.yaml [key=value ...]
    deepspeed --num_gpus N --module infer.ab --config configs/ab.yaml    # Ulysses sequence parallel
    torchrun --nproc_per_node N -m infer.ab deepspeed.sequence_parallel=1  # data parallel over clips

Each clip's first frame conditions the generation and the clip itself is the reference. The arms
(`infer.arms`: named token policies, today uniform, the baseline, and CAT) share conditioning,
seeded noise, scheduler, LoRAs and settings; they differ only in the tokenization of each step. Arms alternate order from seed to seed so slow drifts of a shared
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
from typing import Any, NamedTuple

import torch
from omegaconf import OmegaConf

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.lora_files import apply_loras
from core.media import to_uint8_frames, write_mp4
from core.models import Components as WanComponents
from core.models import load_components, resolve_device
from core.schema import ABConfig
from infer.arms import Arm, ArmRun, ClipResult, SeedRun, SweepRow, ab_arm_infos, ab_arms
from infer.clips import BenchClip, list_clips, load_clip
from infer.metrics import LpipsMetric, VideoMetrics, load_lpips, metric_specs, psnr
from infer.oracle import ab_latent_errors
from infer.parallel import ParallelContext, SequenceParallel, gather_json, init_parallel, shard_items, zero_inference
from infer.report import aggregate_levels, aggregate_sweep, write_report_json, write_report_md
from infer.report_schema import SCHEMA_VERSION
from infer.sampler import Conditioning, Denoising, decode, lockstep, make_scheduler, prepare_conditioning


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
class ArmOutcome(NamedTuple):
    """One arm's run: its numbers, its decoded video (1, 3, T, H, W) and its denoise result."""

    run: ArmRun
    video: torch.Tensor
    result: Any


def run_arms(comp: WanComponents, cond: Conditioning, arms: list[Arm], cfg: ABConfig, seed: int,
             ctx: ParallelContext, steps: int | None = None, progress: Any = None,
             reference: torch.Tensor | None = None) -> dict[str, ArmOutcome]:
    """Generate with each arm's policy from the same seed, the runs interleaved step by step
    (`lockstep`, in the order given); the outcomes keyed by arm name, in that order (`reference`:
    the clip, for `cat.source: reference`)."""
    runs = {arm.name: Denoising(comp, cond, arm.policy, steps=steps or cfg.steps, seed=seed,
                                guidance_scale=cfg.guidance_scale, reference=reference) for arm in arms}
    with SequenceParallel(comp.transformer, ctx.sp_group) if ctx.sp_size > 1 else contextlib.nullcontext():
        lockstep(list(runs.values()), progress)
    out = {}
    for name, run in runs.items():
        start = time.perf_counter()
        video = decode(comp, run.result.latents)
        s_video = cond.seconds + run.result.seconds + time.perf_counter() - start
        peak = run.peak_memory / 2**20 if comp.device.type == "cuda" else (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # CPU: KiB high-water mark of the process
        numbers = ArmRun(s_per_step=run.result.seconds / len(run.result.steps), s_per_video=s_video,
                         frames_per_s=video.shape[2] / s_video, tokens_per_step=run.result.tokens_per_step,
                         step_seconds=[st.seconds for st in run.result.steps], peak_memory_mb=peak,
                         detail_tokens_per_step=run.result.detail_tokens_per_step)
        out[name] = ArmOutcome(numbers, video, run.result)
    return out


# ---------------------------------------------------------------- one clip
def run_clip(comp: WanComponents, cfg: ABConfig, clip: BenchClip, lpips: LpipsMetric | None, ctx: ParallelContext,
             out_dir: Path, index: int, bars: dict, quality: VideoMetrics | None = None) -> ClipResult:
    """Every arm for every seed (order alternating), metrics, side-by-side video, overlay, rho sweep."""
    reference = load_clip(clip, cfg.num_frames, cfg.height, cfg.width)
    cond = prepare_conditioning(comp, reference[:, :, 0], clip.prompt or cfg.prompt, cfg.num_frames,
                                cfg.negative_prompt, cfg.guidance_scale)
    stem = f"{index:02d}_{clip.level.replace('/', '_')}"
    entry = ClipResult(path=clip.path, level=clip.level, arms=ab_arm_infos(cfg.cat), si=clip.si, ti=clip.ti)
    first: dict[str, ArmOutcome] = {}
    for j, seed in enumerate(cfg.seeds):
        arms = ab_arms(cfg.cat)
        order = arms if j % 2 == 0 else arms[::-1]  # alternate so slow drifts favour no arm
        outcomes = run_arms(comp, cond, order, cfg, seed, ctx, progress=bars.get("steps"), reference=reference)
        outcomes = {a.name: outcomes[a.name] for a in arms}
        base, candidates = arms[0].name, [a.name for a in arms[1:]]
        videos = {name: o.video[0] for name, o in outcomes.items()}
        run = SeedRun(seed=seed, arms={name: o.run for name, o in outcomes.items()},
                      lpips_vs_baseline={c: None for c in candidates})
        if lpips is not None:
            run.lpips_vs_baseline = {c: lpips.video_distance(videos[c], videos[base]) for c in candidates}
            for name, o in outcomes.items():
                o.run.lpips_vs_reference = lpips.video_distance(videos[name], reference[0])
                o.run.psnr_vs_reference = psnr(videos[name], reference[0])
        if quality is not None:  # calibrated metrics: VMAF, ST-LPIPS, PSNR, SSIM
            run.quality = quality.compare_arms(reference[0], videos, base)
        if ctx.rank % ctx.sp_size == 0 and j == 0:
            if cfg.save_videos:
                frames = to_uint8_frames(torch.cat([reference[0], *videos.values()], dim=3))
                names = "_".join(["ref", *outcomes])
                path = write_mp4(frames, out_dir / "videos" / f"{stem}_{names}.mp4", fps=cfg.fps)
                run.side_by_side = str(path.relative_to(out_dir))
                for o in outcomes.values():
                    o.run.video = run.side_by_side
            entry.overlay = _overlay(reference, [o.result for o in outcomes.values()], out_dir / "overlays" / f"{stem}.png",
                                     out_dir, comp.family.geometry)
        if j == 0:
            first = outcomes
            run.oracle_latent_error = _oracle_errors(comp, cfg, reference, outcomes, seed)
        entry.runs.append(run)
        if bars.get("clips") is not None:
            bars["clips"].set_postfix(level=clip.level, speedup=f"{run.speedup(candidates[0]):.2f}x")
    if cfg.rho_sweep and first:
        entry.sweep = _rho_sweep(comp, cfg, cond, reference, ab_arms(cfg.cat), first, lpips, ctx,
                                 quality)
    return entry


def _oracle_errors(comp: WanComponents, cfg: ABConfig, reference: torch.Tensor, outcomes: dict[str, ArmOutcome],
                   seed: int) -> dict[str, float]:
    """Perfect model (infer.oracle): mean |x - x0| of each arm's own allocations replayed step by step;
    an arm that kept uniform tokens throughout gets the perfect model's uniform run."""
    errors: dict[str, float] = {}
    plain: float | None = None  # the perfect model on uniform tokens
    for name, o in outcomes.items():
        if any(a is not None for _, a in o.result.allocations):
            e = ab_latent_errors(comp, reference, o.result.allocations, steps=cfg.steps, seed=seed)
            errors[name], plain = e["cat"], e["uniform"]  # "cat": the replay of the allocations given
    if plain is None:
        changes = next(iter(outcomes.values())).result.allocations  # all uniform
        plain = ab_latent_errors(comp, reference, changes, steps=cfg.steps, seed=seed)["uniform"]
    return {name: errors.get(name, plain) for name in outcomes}


def _overlay(reference: torch.Tensor, results: list[Any], path: Path, out_dir: Path, geometry: Any) -> str | None:
    """PNG of the arms' last non-uniform allocation over the reference frames (None if all stayed
    uniform), in the model family's pixel cells."""
    allocations = [a for result in results for _, a in result.allocations if a is not None]
    if not allocations:
        return None
    from cat.overlay import draw_allocation

    return str(draw_allocation(reference, allocations[-1], path, geometry=geometry).relative_to(out_dir))


def _rho_sweep(comp: WanComponents, cfg: ABConfig, cond: Conditioning, reference: torch.Tensor, arms: list[Arm],
               first: dict[str, ArmOutcome], lpips: LpipsMetric | None, ctx: ParallelContext,
               quality: VideoMetrics | None = None) -> list[SweepRow]:
    """Each arm with a token budget at each rho of the sweep (first seed), against this clip's first
    baseline run."""
    base = first[arms[0].name]
    rows = []
    scorer = quality.scorer(base.video[0]) if quality is not None else None
    for arm in arms[1:]:
        if arm.at_rho is None:
            continue
        for rho in cfg.rho_sweep:
            swept = dataclasses.replace(arm, policy=arm.at_rho(rho))
            o = run_arms(comp, cond, [swept], cfg, cfg.seeds[0], ctx, reference=reference)[arm.name]
            rows.append(SweepRow(
                arm=arm.name, rho=rho, tokens=o.run.tokens, speedup=base.run.s_per_step / o.run.s_per_step,
                lpips_vs_baseline=lpips.video_distance(o.video[0], base.video[0]) if lpips is not None else None,
                vmaf_vs_baseline=scorer.score(o.video[0])["vmaf"] if scorer is not None else None))
    return rows


# ---------------------------------------------------------------- the whole A/B
def _timing_warmup(comp: WanComponents, cfg: ABConfig, clips: list[BenchClip], ctx: ParallelContext) -> None:
    """One short untimed run of each arm on the first readable clip: lazy initialisation must not
    land in the first timing (an unreadable clip is skipped here and rejected in the main loop)."""
    for clip in clips:
        try:
            reference = load_clip(clip, cfg.num_frames, cfg.height, cfg.width)
        except Exception:  # noqa: BLE001 - reported with its reason by run_ab
            continue
        cond = prepare_conditioning(comp, reference[:, :, 0], cfg.prompt, cfg.num_frames, cfg.negative_prompt,
                                    cfg.guidance_scale)
        steps = min(cfg.steps, cfg.cat.warmup_steps + 1)
        run_arms(comp, cond, ab_arms(cfg.cat), cfg, cfg.seeds[0], ctx, steps=steps, reference=reference)
        return


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
    results: list[ClipResult] = []
    with tqdm(mine, desc="A/B clips", unit="clip", disable=not show) as clip_bar, \
            tqdm(desc="denoising steps", unit="step", disable=not show, leave=False) as step_bar:
        bars.update(clips=clip_bar, steps=step_bar)
        for index, clip in clip_bar:
            try:
                results.append(run_clip(comp, cfg, clip, lpips, ctx, out_dir, index, bars, quality))
            except Exception as exc:  # one bad clip (unreadable, too short) is reported with its reason, not fatal
                rejected.append({"path": clip.path, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"})
    arms = ab_arm_infos(cfg.cat)
    if ctx.distributed:  # data parallel: group leaders hold results; merge them on every rank (as JSON)
        leader = ctx.rank % ctx.sp_size == 0
        gathered = gather_json({"rejected": rejected,
                                "clips": [c.to_json(with_sweep=True) for c in results] if leader else []}, ctx)
        results = [ClipResult.from_json(c, arms) for part in gathered for c in part["clips"]]
        rejected = list({r["path"]: r for part in gathered for r in part["rejected"]}.values())
    report = build_report(cfg, comp, arms, results, rejected, lpips.calibrated, lpips.note)
    if ctx.is_main:
        write_outputs(report, cfg, out_dir)
    return report


def build_report(cfg: ABConfig, comp: WanComponents, arms: list[dict[str, str]], clips: list[ClipResult],
                 rejected: list[dict], calibrated: bool, note: str) -> dict:
    """report.json's content (infer/report_schema.py): per-arm numbers under each arm's name."""
    sweep = aggregate_sweep(clips, arms)
    report = {
        "schema_version": SCHEMA_VERSION,
        "arms": arms,
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
        "levels": aggregate_levels(clips, arms, calibrated, ideal_speedup_fn(comp)),
        "clips": [c.to_json() for c in clips],
        "rejected": rejected,
        "artifacts": {},
    }
    if sweep:
        report["rho_sweep"] = sweep
    return report


def write_outputs(report: dict, cfg: ABConfig, out_dir: Path) -> None:
    """report.json, report.md, plots, config.yaml; W&B when enabled."""
    from infer.plots import plot_levels, plot_rho_curve

    arms, calibrated = report["arms"], report["lpips_calibrated"]
    plots = {"speedup and LPIPS per level": plot_levels(report["levels"], arms, calibrated,
                                                        out_dir / "plots" / "levels.png", report["device"])}
    if report.get("rho_sweep"):
        plots["speed/quality over rho"] = plot_rho_curve(report["rho_sweep"], arms, calibrated,
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
        print("\n".join(level_table(report["levels"], report["arms"], report["lpips_calibrated"])))
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
