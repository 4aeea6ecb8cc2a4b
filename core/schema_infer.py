"""Config schemas of the inference-side commands: the A/B (`infer.ab`), the quality bound
(`infer.bound`) and the demo. Split from `core.schema` (which re-exports every name here) to keep
each module short; the README reference renders both modules in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.checks import check_frames, check_size
from core.config import ConfigError
from core.schema import LoraFile, ModelConfig

CAT_SOURCES = ("predicted", "reference")
WARMUP_TOKENS = ("image", "uniform")
ZERO_OFFLOAD = ("cpu", "none")
AB_SCHEDULERS = ("model", "unipc", "euler")


@dataclass
class CatInferConfig:
    """CAT at inference: where the allocation comes from, its budget, and how often it changes."""

    source: str = "predicted"  # predicted (image, then the model's predicted clean latent) | reference (the clip's real frames: oracle)
    rho: Optional[float] = None  # keep ratio tokens / uniform tokens; unset = thresholds (content decides the budget)
    thresholds: list[float] = field(default_factory=lambda: [0.7, 1.0])  # [spatial, temporal] on pixel complexity: RMS luma error (0..255) pooling may add
    latent_thresholds: list[float] = field(default_factory=lambda: [0.5, 0.3])  # [spatial, temporal] on the predicted latent
    warmup_steps: int = 2  # k: steps before the first allocation from the predicted clean latent
    warmup_tokens: str = "image"  # tokens during warm-up: image (spatial allocation from the conditioning image) | uniform
    refresh_every: int = 2  # m: steps between re-allocations from the predicted clean latent
    schedule: list[float] = field(default_factory=list)  # coarseness factor per step span, e.g. [2, 1] = first half 2x coarser

    def validate(self) -> None:
        if self.source not in CAT_SOURCES:
            raise ConfigError(f"cat.source='{self.source}' is not one of {CAT_SOURCES}")
        if self.warmup_tokens not in WARMUP_TOKENS:
            raise ConfigError(f"cat.warmup_tokens='{self.warmup_tokens}' is not one of {WARMUP_TOKENS}")
        if self.rho is not None and not 0.0 < self.rho <= 1.0:
            raise ConfigError(f"cat.rho={self.rho} must be in (0, 1]")
        for key in ("thresholds", "latent_thresholds"):
            value = getattr(self, key)
            if len(value) != 2 or min(value) < 0:
                raise ConfigError(f"cat.{key}={value} must be two non-negative numbers [spatial, temporal]")
        if self.warmup_steps < 0 or self.refresh_every < 1:
            raise ConfigError("cat.warmup_steps must be >= 0 and cat.refresh_every >= 1")
        if any(f <= 0 for f in self.schedule):
            raise ConfigError(f"cat.schedule={self.schedule} must hold positive factors")


@dataclass
class DeepSpeedInferConfig:
    """DeepSpeed at inference (docs/infer.md has the launch lines)."""

    zero_inference: bool = False  # one GPU: ZeRO stage-3 parameter offload so 14B fits smaller GPUs
    offload: str = "cpu"  # where ZeRO-Inference keeps parameters: cpu | none
    sequence_parallel: int = 0  # ranks per Ulysses sequence-parallel group (0 = all); several groups split the clips (data parallel)

    def validate(self) -> None:
        if self.offload not in ZERO_OFFLOAD:
            raise ConfigError(f"deepspeed.offload='{self.offload}' is not one of {ZERO_OFFLOAD}")
        if self.sequence_parallel < 0:
            raise ConfigError(f"deepspeed.sequence_parallel={self.sequence_parallel} must be >= 0")


@dataclass
class ABConfig:
    """`python -m infer.ab`: CAT vs uniform tokenization per clip and redundancy level."""

    model: ModelConfig = field(default_factory=ModelConfig)
    transformer: Optional[str] = None  # midsize: swap in core.models.wan21.MIDSIZE_TRANSFORMER with random weights (benchmarks)
    clips_dir: Optional[str] = None  # folder of clips (grid.json gives levels); unset = synthetic 3x3 SI/TI grid
    grid_seed: int = 0  # seed of the synthetic grid
    levels: list[str] = field(default_factory=list)  # only these redundancy levels; empty = all
    max_clips: int = 0  # 0 = every clip
    prompt: str = "a cinematic shot, warm light, film grain"
    negative_prompt: str = ""
    height: int = 64  # clips are resized to this (multiple of 16)
    width: int = 64
    num_frames: int = 9  # first frames of each clip used (4k+1)
    fps: int = 16
    steps: int = 4
    guidance_scale: float = 1.0  # > 1: classifier-free guidance (two forwards per step)
    scheduler: str = "model"  # model (the folder's scheduler) | unipc | euler (flow-matching Euler)
    flow_shift: float = 3.0  # Wan's flow shift for unipc/euler: 3.0 at 480p, 5.0 at 720p
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # each clip runs once per seed: mean and 95% CI
    loras: list[LoraFile] = field(default_factory=list)  # applied to both arms
    cat: CatInferConfig = field(default_factory=CatInferConfig)
    rho_sweep: list[float] = field(default_factory=list)  # extra CAT runs at these rho (seed 0): speed/quality curve
    timing_warmup: bool = True  # one untimed uniform + CAT run first (allocator, lazy init)
    cpu_threads: int = 0  # CPU runs only: torch threads during the A/B (restored after); 0 = torch's default (tiny models: 1 is fastest)
    save_videos: bool = True  # side-by-side mp4 (reference | uniform | CAT) per clip, first seed
    st_lpips_frames: int = 3  # frames scored by ST-LPIPS (evenly spaced, first and last included; 0 = all); VMAF, PSNR, SSIM use all
    deepspeed: DeepSpeedInferConfig = field(default_factory=DeepSpeedInferConfig)
    wandb: bool = False  # log tables, plots and videos to W&B (offline unless WANDB_MODE says otherwise)
    wandb_project: str = "cinelora"
    output_dir: str = "runs/ab"  # report.json, report.md, plots/, videos/, overlays/

    def validate(self) -> None:
        self.model.validate()
        self.cat.validate()
        self.deepspeed.validate()
        from core.models import get_family

        geometry = get_family(self.model.family).geometry
        check_frames(self.num_frames, "num_frames", geometry.vae_t)
        check_size(self.height, self.width, geometry.cell_px)
        if self.scheduler not in AB_SCHEDULERS:
            raise ConfigError(f"scheduler='{self.scheduler}' is not one of {AB_SCHEDULERS}")
        if self.transformer not in (None, "midsize"):
            raise ConfigError(f"transformer='{self.transformer}' is unknown; use transformer=midsize or leave it unset")
        if self.steps < 1 or not self.seeds or self.max_clips < 0 or self.cpu_threads < 0 or self.st_lpips_frames < 0:
            raise ConfigError("steps must be >= 1, seeds non-empty, max_clips >= 0, cpu_threads >= 0, st_lpips_frames >= 0")
        if self.guidance_scale < 1.0:
            raise ConfigError(f"guidance_scale={self.guidance_scale} must be >= 1 (1 = no guidance)")
        if any(not 0.0 < r <= 1.0 for r in self.rho_sweep):
            raise ConfigError(f"rho_sweep={self.rho_sweep} values must be in (0, 1]")

BOUND_COMPLEXITY = ("full", "generation")


@dataclass
class BoundConfig:
    """`python -m infer.bound`: what each allocation gives up under a perfect model, in pixels, per redundancy level."""

    clips_dir: Optional[str] = None  # folder of clips (grid.json gives levels, else measured SI/TI); unset = the synthetic UHD SI/TI grid in grid_dir
    grid_dir: str = "runs/grid"  # the default grid's folder: made on first use (minutes at UHD), reused after
    grid_height: int = 2160  # size of the default grid
    grid_width: int = 3840
    grid_frames: int = 33
    grid_seed: int = 0
    levels: list[str] = field(default_factory=list)  # only these redundancy levels; empty = all
    max_clips: int = 0  # 0 = every clip
    height: int = 352  # generation size: allocations on its token grid, the bound rendered and scored at it
    width: int = 640
    num_frames: int = 17  # first frames of each clip (4k+1)
    fps: int = 16
    rhos: list[float] = field(default_factory=lambda: [0.75, 0.5, 0.25])  # keep-ratio budgets
    thresholds: list[float] = field(default_factory=lambda: [0.7, 1.0])  # the threshold budget [spatial, temporal] (cat.thresholds default)
    complexity: str = "full"  # full: read from full-resolution frames when the size is an exact k-times downscale (else generation) | generation
    st_lpips_frames: int = 3  # frames scored by ST-LPIPS (evenly spaced, first and last included; 0 = all); VMAF, PSNR, SSIM use all
    cpu_threads: int = 1  # torch threads (CPU); 1 is fastest on a shared 2-core machine
    output_dir: str = "runs/bound"  # bound.json, report.md, plots/

    def validate(self) -> None:
        from core.models import get_family

        geometry = get_family().geometry  # the bound runs on the default family (infer.bound)
        check_frames(self.num_frames, "num_frames", geometry.vae_t)
        check_frames(self.grid_frames, "grid_frames", geometry.vae_t)
        check_size(self.height, self.width, geometry.cell_px)
        if self.complexity not in BOUND_COMPLEXITY:
            raise ConfigError(f"complexity='{self.complexity}' is not one of {BOUND_COMPLEXITY}")
        if any(not 0.0 < r <= 1.0 for r in self.rhos):
            raise ConfigError(f"rhos={self.rhos} values must be in (0, 1]")
        if len(self.thresholds) != 2 or min(self.thresholds) < 0:
            raise ConfigError(f"thresholds={self.thresholds} must be two non-negative numbers [spatial, temporal]")
        if self.st_lpips_frames < 0 or self.max_clips < 0 or self.cpu_threads < 0:
            raise ConfigError("st_lpips_frames, max_clips and cpu_threads must be >= 0")
        if self.clips_dir is None and self.grid_frames < self.num_frames:
            raise ConfigError(f"grid_frames={self.grid_frames} must be >= num_frames={self.num_frames}")


@dataclass
class DemoConfig:
    """`python -m infer.demo`: synthetic data -> prepare -> stage 1 -> stage 2 -> export -> A/B, all under output_dir."""

    output_dir: str = "runs/demo"  # data/, stage1_style/, stage2_motion/, lora/, ab/ land here
    model: ModelConfig = field(default_factory=ModelConfig)  # the same model for every step (default: tiny preset)
    style_clips: int = 6  # synthetic style clips to train on
    train_steps: int = 60  # optimizer steps of each stage
    ab: ABConfig = field(default_factory=lambda: ABConfig(height=96, width=96, num_frames=9, steps=4, seeds=[0, 1],
                                                          rho_sweep=[0.25, 0.5, 0.75], cpu_threads=1))  # the A/B (output_dir set by the demo)

    def validate(self) -> None:
        self.model.validate()
        self.ab.validate()
        if self.style_clips < 2 or self.train_steps < 1:
            raise ConfigError(f"style_clips={self.style_clips} must be >= 2 and train_steps={self.train_steps} >= 1")
