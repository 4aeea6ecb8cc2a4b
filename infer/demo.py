"""`make demo`: the whole pipeline end to end on the embedded tiny model, in a few minutes on a CPU.

    python -m infer.demo [output_dir=runs/demo] [train_steps=12] [ab.seeds=[0]] [key=value ...]

synthetic style clips -> data.prepare -> stage 1 (style LoRA, cross-attention) -> stage 2 (motion
LoRA on CAT tokens) -> export of both LoRAs (diffusers and ComfyUI formats) -> A/B of CAT vs
uniform tokenization on the synthetic SI/TI grid with the two LoRAs stacked -> the perfect-denoiser
harness (infer.oracle -> oracle.json) -> the quality bound (`infer.bound`) on that grid at the A/B's
size. Everything is written under output_dir; each step runs in-process through the same
`main(argv)` as its CLI.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from core.config import ConfigError, parse_cli, run_cli, to_yaml
from core.schema import DemoConfig, LoraFile


def _model_overrides(cfg: DemoConfig) -> list[str]:
    m = cfg.model
    out = [f"model.preset={m.preset}", f"model.dtype={m.dtype}", f"model.device={m.device}",
           f"model.cache_dir={m.cache_dir}", f"model.seed={m.seed}"]
    if m.path:
        out.append(f"model.path={m.path}")
    return out


def _export(export, runs: tuple[Path, ...], folder: Path) -> int:
    return max(export.main([str(run), "--format", "both", "--output", str(folder)]) for run in runs)


def _step(name: str, fn, *args) -> float:
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    code = fn(*args)
    if isinstance(code, int) and code != 0:
        raise SystemExit(f"demo: {name} failed with exit code {code}")
    seconds = time.perf_counter() - start
    print(f"=== {name}: {seconds:.0f} s", flush=True)
    return seconds


def _bound(ab, out: Path) -> int:
    """`infer.bound` on the clips the A/B just used, at the A/B's size (small, so the demo stays quick)."""
    from core.schema import BoundConfig
    from infer.bound import run_bound

    cfg = BoundConfig(clips_dir=ab.clips_dir or str(out / "ab" / "grid"), levels=list(ab.levels), max_clips=ab.max_clips,
                      height=ab.height, width=ab.width, num_frames=ab.num_frames, output_dir=str(out / "bound"))
    return 0 if run_bound(cfg)["rows"] else 1


def run_demo(cfg: DemoConfig) -> dict:
    """Run every step; returns the paths of what it wrote and the seconds each step took."""
    import torch

    import data.prepare
    import train.export
    import train.stage1
    import train.stage2
    from data.synth.style import make_style_set
    from infer.ab import run_ab

    threads = torch.get_num_threads()  # the training stages may pin their own thread count
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.yaml").write_text(to_yaml(cfg))
    clips, prepared = out / "data" / "style_clips", out / "data" / "prepared"
    stage1, stage2, loras = out / "stage1_style", out / "stage2_motion", out / "lora"
    model = _model_overrides(cfg)
    train_common = [*model, f"data.prepared_dir={prepared}", f"max_steps={cfg.train_steps}", "checkpoint.every=0",
                    "optim.warmup_steps=0"]
    seconds = {
        "synthetic style clips": _step("synthetic style clips", make_style_set, clips, cfg.style_clips, 64, 112, 17),
        "prepare": _step("data.prepare", data.prepare.main, [
            "--config", "configs/data.yaml", *model, f"input_dir={clips}", f"output_dir={prepared}", "num_frames=9",
            "resolution=64p", "keyframes=true"]),
        "stage 1": _step("stage 1 (style LoRA)", train.stage1.main, [
            "--config", "configs/stage1_style.yaml", *train_common, f"output_dir={stage1}"]),
        "stage 2": _step("stage 2 (motion LoRA on CAT tokens)", train.stage2.main, [
            "--config", "configs/stage2_motion.yaml", *train_common, f"base_lora={stage1}", f"output_dir={stage2}"]),
        "export": _step("export (diffusers + ComfyUI)", _export, train.export, (stage1, stage2), loras),
    }
    exported = sorted(p for p in loras.glob("*.safetensors") if not p.stem.endswith("_comfyui"))
    if len(exported) != 2:
        raise ConfigError(f"expected the style and motion LoRAs in {loras}, found {[p.name for p in exported]}")
    torch.set_num_threads(threads)
    ab = cfg.ab
    ab.model = cfg.model
    ab.output_dir = str(out / "ab")
    ab.loras = [LoraFile(path=str(p), weight=1.0) for p in exported]
    start = time.perf_counter()
    print("\n=== A/B: CAT vs uniform per redundancy level (both LoRAs stacked)", flush=True)
    report = run_ab(ab)
    seconds["A/B"] = time.perf_counter() - start
    import infer.oracle

    oracle = out / "oracle.json"
    seconds["oracle"] = _step("perfect-denoiser harness (infer.oracle)", infer.oracle.main, ["--json", str(oracle)])
    seconds["quality bound"] = _step("quality bound on the A/B's grid (perfect model, VMAF / ST-LPIPS)", _bound, ab, out)
    return {"report": out / "ab" / "report.md", "report_json": out / "ab" / "report.json", "oracle": oracle,
            "bound": out / "bound",
            "videos": out / "ab" / "videos", "loras": loras, "levels": len(report["levels"]), "seconds": seconds,
            "rejected": report["rejected"], "expected_levels": expected_levels(ab)}


def expected_levels(ab) -> int:
    """Levels the demo's A/B promises: all 9 of the synthetic grid, else at least one."""
    from data.synth.grid import SI_BANDS, TI_BANDS

    if ab.clips_dir is None and not ab.levels and not ab.max_clips:
        return len(SI_BANDS) * len(TI_BANDS)
    return 1


def main(argv: list[str] | None = None) -> int:
    cfg = parse_cli(DemoConfig, argv)
    start = time.perf_counter()
    result = run_demo(cfg)
    total = time.perf_counter() - start
    if result["levels"] < result["expected_levels"]:
        rejected = result["rejected"]
        first = f"; first: {Path(rejected[0]['path']).name}: {rejected[0]['reason']}" if rejected else ""
        print(f"error: demo A/B has {result['levels']} of {result['expected_levels']} redundancy levels "
              f"({len(rejected)} clip(s) rejected{first}); reasons in {result['report']}", file=sys.stderr)
        return 1
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in result["seconds"].items())
    print(f"\ndemo finished in {total:.0f} s ({timing})")
    print(f"report:  {result['report']} ({result['levels']} redundancy levels) and {result['report_json']}")
    print(f"videos:  {result['videos']} (reference | uniform | CAT, side by side)")
    print(f"oracle:  {result['oracle']} (perfect model: latent error per cell class, CAT vs uniform)")
    print(f"bound:   {result['bound'] / 'report.md'} (quality bound per level, calibrated VMAF / ST-LPIPS)")
    print(f"LoRAs:   {result['loras']} (diffusers and *_comfyui.safetensors)")
    print("note: the tiny model is too small for CAT to pay off (fixed costs dominate ~100 tokens); "
          "speed per redundancy level is measured by `make bench-ab` on the mid-size model")
    return 0


if __name__ == "__main__":
    run_cli(main)
