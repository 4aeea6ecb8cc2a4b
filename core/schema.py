"""Typed configuration schemas: the single source of truth for every config key.

Each entry point loads one top-level schema (``GenerateConfig``, ``PrepareConfig``,
``TrainConfig``, ``ABConfig``) with :func:`core.config.parse_cli`. The README's config
reference is checked against these classes by a test. ``MISSING`` marks a required value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from core.checks import check_frames, check_size, resolution_base
from core.config import MISSING, ConfigError

DTYPES = ("fp32", "bf16", "fp16")
BASE_DTYPES = ("bf16", "fp8")


# ---------------------------------------------------------------- model (core/models/)
@dataclass
class ModelConfig:
    """Which model family, and where its components come from."""

    family: str = "wan2.1-i2v"  # model family (core/models/registry.py): wan2.1-i2v | wan2.2-ti2v
    path: Optional[str] = None  # local diffusers-layout folder (Wan-AI/Wan2.1-I2V-14B-720P-Diffusers, Wan-AI/Wan2.2-TI2V-5B-Diffusers)
    preset: str = "tiny"  # used when path is unset: "tiny" = random seeded Wan built offline
    model_id: Optional[str] = None  # name recorded in caches/exports; default: folder name or preset
    dtype: str = "fp32"  # transformer + text encoder dtype: fp32 | bf16 | fp16 (VAE, CLIP stay fp32)
    device: str = "auto"  # auto (cuda if present) | cpu | cuda | cuda:N
    cpu_offload: bool = False  # diffusers model CPU offload at inference (14B on smaller GPUs)
    base_dtype: Optional[str] = None  # frozen transformer weights: unset = model.dtype | bf16 | fp8 (float8_e4m3fn storage, bf16 compute)
    blocks_to_swap: int = 0  # keep this many transformer blocks' frozen weights in host memory, streamed in per call (one process)
    transformer_file: Optional[str] = None  # original Wan2.1 / ComfyUI single-file transformer (.safetensors); config + other parts from path/preset
    cache_dir: str = "~/.cache/cinelora"  # where the tiny preset is written once
    seed: int = 0  # seed of the tiny preset's random weights

    def validate(self) -> None:
        from core.models.registry import FAMILIES

        if self.family not in FAMILIES:
            raise ConfigError(f"model.family '{self.family}' is unknown; choose one of {', '.join(FAMILIES)}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype '{self.dtype}' is not one of {DTYPES}")
        if self.base_dtype is not None and self.base_dtype not in BASE_DTYPES:
            raise ConfigError(f"model.base_dtype '{self.base_dtype}' is not one of {BASE_DTYPES} (or unset = model.dtype)")
        if self.blocks_to_swap < 0:
            raise ConfigError(f"model.blocks_to_swap={self.blocks_to_swap} must be >= 0 (0 = every block on the device)")
        if self.blocks_to_swap and self.cpu_offload:
            raise ConfigError("model.blocks_to_swap and model.cpu_offload exclude each other; use one of them")
        if self.path is None and self.preset != "tiny":
            raise ConfigError(f"model.preset '{self.preset}' is unknown; use preset=tiny or set model.path=FOLDER")


@dataclass
class LoraFile:
    """One exported LoRA to stack at inference."""

    path: str = MISSING  # .safetensors file or folder from train.export
    weight: float = 1.0  # scale of this adapter's contribution
    name: Optional[str] = None  # adapter name; default: file stem


# ---------------------------------------------------------------- generation (infer/generate.py)
@dataclass
class GenerateConfig:
    """`python -m infer.generate`: one image + prompt to one video."""

    model: ModelConfig = field(default_factory=ModelConfig)
    image: Optional[str] = None  # conditioning image; unset = a built-in synthetic test frame
    prompt: str = "a cinematic shot, warm light, film grain"
    negative_prompt: str = ""  # used when guidance_scale > 1
    height: int = 64  # pixels, multiple of 16
    width: int = 64  # pixels, multiple of 16
    num_frames: int = 9  # 4k+1 (Wan VAE)
    steps: int = 4  # denoising steps
    guidance_scale: float = 1.0  # classifier-free guidance; 1.0 = off (one transformer pass per step)
    seed: int = 0  # noise seed
    fps: int = 16  # frame rate written into the mp4
    loras: list[LoraFile] = field(default_factory=list)  # exported LoRAs stacked on the base model
    scheduler: str = "model"  # model (the folder's scheduler) | unipc | euler (flow-matching Euler), as in the A/B
    flow_shift: float = 3.0  # Wan's flow shift for unipc/euler: 3.0 at 480p, 5.0 at 720p
    cat: Optional[CatInferConfig] = None  # unset = uniform tokens; any cat.* key (e.g. cat.rho=0.5) = CAT, the A/B's schema
    output_dir: str = "runs/generate"  # video.mp4, contact_sheet.png, overlay.png (CAT), generate.json, config.yaml

    def validate(self) -> None:
        self.model.validate()
        from core.models import get_family

        geometry = get_family(self.model.family).geometry
        check_frames(self.num_frames, "num_frames", geometry.vae_t)
        check_size(self.height, self.width, geometry.cell_px)
        if self.scheduler not in AB_SCHEDULERS:
            raise ConfigError(f"scheduler='{self.scheduler}' is not one of {AB_SCHEDULERS}")
        if self.cat is not None:
            self.cat.validate()
            if self.cat.source == "reference":
                raise ConfigError("cat.source=reference needs a reference clip, which infer.generate has none of; "
                                  "use cat.source=predicted")
            if self.model.cpu_offload:
                raise ConfigError("model.cpu_offload moves whole models around their forward, which CAT's forward "
                                  "bypasses; drop model.cpu_offload or the cat.* keys")
        if self.steps < 1 or self.fps < 1:
            raise ConfigError(f"steps={self.steps} and fps={self.fps} must be >= 1")
        if self.guidance_scale < 1.0:
            raise ConfigError(f"guidance_scale={self.guidance_scale} must be >= 1 (1 = no guidance)")


# ---------------------------------------------------------------- data (data/prepare.py) — owned by the data work
MISSING_CAPTION_POLICIES = ("skip", "default")


@dataclass
class PrepareConfig:
    """`python -m data.prepare`: a folder of clips -> windows, manifest, caches, dataset card."""

    input_dir: str = MISSING  # folder of mp4/mov/mkv/webm clips (searched recursively)
    output_dir: str = MISSING  # manifest/, cache/, rejects.jsonl, README.md land here
    model: ModelConfig = field(default_factory=ModelConfig)  # encoder for the caches (VAE, UMT5, CLIP)
    num_frames: int = 33  # frames per window; 4k+1 (Wan VAE)
    stride: int = 0  # frames between window starts at the target fps; 0 = num_frames (no overlap)
    fps: float = 16.0  # clips are resampled to this frame rate (by timestamps: variable frame rate is fine)
    max_windows_per_clip: int = 0  # 0 = no limit
    keyframes: bool = False  # also add one single-frame window (F'=1) per window, at its middle frame
    split_scenes: bool = False  # cut clips at shot changes (PySceneDetect) so no window spans a cut
    scene_threshold: float = 27.0  # PySceneDetect ContentDetector threshold
    resolution: str = "480p"  # 480p | 720p | <N>p (landscape N x ~16N/9, e.g. 64p for the tiny model)
    aspect_ratios: list[float] = field(default_factory=lambda: [16 / 9, 4 / 3, 1.0, 3 / 4, 9 / 16])  # width/height
    max_upscale: float = 2.0  # a clip needing more upscaling than this to fill its bucket is rejected
    trigger: Optional[str] = None  # prepended to every caption ("elturco style, ...")
    missing_caption: str = "skip"  # skip (reported in rejects.jsonl) | default (use default_caption, reported)
    default_caption: str = "a cinematic shot"  # used for clips without a caption when missing_caption=default
    metadata_file: Optional[str] = None  # captions table (.csv with file,caption / .jsonl); default: input_dir/metadata.*
    val_fraction: float = 0.1  # share of CLIPS in the validation split (deterministic hash of the relative path)
    encode: bool = True  # false: manifest + complexity only, no model needed
    batch_size: int = 1  # windows per VAE call (same bucket)

    def validate(self) -> None:
        self.model.validate()
        from core.models import get_family

        check_frames(self.num_frames, "num_frames", get_family(self.model.family).geometry.vae_t)
        if self.stride < 0:
            raise ConfigError(f"stride={self.stride} must be >= 0 (0 = num_frames, no overlap)")
        if self.fps <= 0:
            raise ConfigError(f"fps={self.fps} must be positive")
        if self.missing_caption not in MISSING_CAPTION_POLICIES:
            raise ConfigError(f"missing_caption='{self.missing_caption}' is not one of {MISSING_CAPTION_POLICIES}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in [0, 1)")
        if not self.aspect_ratios or any(a <= 0 for a in self.aspect_ratios):
            raise ConfigError(f"aspect_ratios={self.aspect_ratios} must be a non-empty list of positive width/height")
        if self.max_upscale < 1.0:
            raise ConfigError(f"max_upscale={self.max_upscale} must be >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size} must be >= 1")
        resolution_base(self.resolution)


# ---------------------------------------------------------------- training (train/) — owned by the train work
TIMESTEP_SAMPLINGS = ("uniform", "logit_normal", "shifted")
MIXED_PRECISIONS = ("no", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "constant")
TRACKERS = ("wandb", "tensorboard")
KEYFRAME_POLICIES = ("include", "exclude", "only")
BASE_LORA_MODES = ("frozen", "merged")


@dataclass
class LoraSpec:
    """The LoRA a stage trains (a peft `LoraConfig` on the frozen transformer)."""

    rank: int = 16
    alpha: float = 16.0  # scale = alpha / rank; stored in every export so it survives loading
    dropout: float = 0.0
    targets: list[str] = field(default_factory=list)  # per-block layer names (attn2.to_q, ffn.net.2); empty = stage default
    image_branch: bool = False  # also attn2.add_k_proj/add_v_proj (the I2V image-context projections)
    name: str = "style"  # adapter name (style | motion); also the export file stem

    def validate(self) -> None:
        if self.rank < 1:
            raise ConfigError(f"lora.rank={self.rank} must be >= 1")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha} must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout} must be in [0, 1)")
        if not self.name.isidentifier():
            raise ConfigError(f"lora.name='{self.name}' must be a plain identifier (letters, digits, _)")


@dataclass
class TrainDataConfig:
    """Which cached windows a stage trains on (the output of `python -m data.prepare`)."""

    prepared_dir: str = MISSING  # data.prepare output_dir (manifest/, cache/)
    synthetic_if_missing: bool = False  # no cache there yet: build the synthetic style set and prepare it first
    synthetic_clips: int = 12  # clips in that synthetic set
    synthetic_resolution: str = "64p"  # data.prepare resolution for that synthetic set
    synthetic_frames: int = 33  # window length (4k+1) of that synthetic set
    keyframes: Optional[str] = None  # single-frame windows (F'=1): include | exclude | only; unset = the stage's (stage 1 include, stage 2 exclude)
    batch_size: int = 1  # windows per step and process (same-shape windows are batched together)
    num_workers: int = 0  # DataLoader workers
    val_limit: int = 0  # held-out windows used for the loss; 0 = all of the val split

    def validate(self) -> None:
        if self.keyframes is not None and self.keyframes not in KEYFRAME_POLICIES:
            raise ConfigError(f"data.keyframes='{self.keyframes}' is not one of {KEYFRAME_POLICIES}")
        if self.batch_size < 1:
            raise ConfigError(f"data.batch_size={self.batch_size} must be >= 1")
        if self.num_workers < 0 or self.val_limit < 0 or self.synthetic_clips < 2:
            raise ConfigError("data.num_workers and data.val_limit must be >= 0, data.synthetic_clips >= 2")


@dataclass
class ObjectiveConfig:
    """Wan's rectified-flow objective: x_s = (1 - s) x0 + s noise, target = noise - x0."""

    timestep_sampling: str = "shifted"  # uniform | logit_normal | shifted (uniform, then Wan's shift)
    shift: float = 3.0  # Wan flow shift s' = k s / (1 + (k - 1) s): 3.0 at 480p, 5.0 at 720p
    logit_mean: float = 0.0  # logit_normal: s = sigmoid(N(mean, std))
    logit_std: float = 1.0
    heldout_sigmas: int = 8  # held-out loss: this many evenly spaced noise levels per window, fixed noise

    def validate(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ConfigError(f"objective.timestep_sampling='{self.timestep_sampling}' is not one of {TIMESTEP_SAMPLINGS}")
        if self.shift <= 0 or self.logit_std <= 0 or self.heldout_sigmas < 1:
            raise ConfigError("objective.shift and objective.logit_std must be positive, heldout_sigmas >= 1")


@dataclass
class OptimConfig:
    """AdamW on the LoRA parameters, warmup then cosine (or constant) learning rate."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine (to 0 at max_steps) | constant
    max_grad_norm: float = 1.0  # 0 = no clipping

    def validate(self) -> None:
        if self.lr <= 0 or self.warmup_steps < 0 or self.max_grad_norm < 0 or len(self.betas) != 2:
            raise ConfigError("optim.lr must be positive, warmup_steps/max_grad_norm >= 0, betas two numbers")
        if self.schedule not in LR_SCHEDULES:
            raise ConfigError(f"optim.schedule='{self.schedule}' is not one of {LR_SCHEDULES}")


@dataclass
class TokenizationConfig:
    """Stage 2: content-adaptive tokens (CAT) from the real frames' complexity."""

    rho: float = 0.5  # keep ratio: tokens / uniform tokens
    rho_range: list[float] = field(default_factory=list)  # [lo, hi]: draw rho uniformly per step instead
    eval_rho: Optional[float] = None  # rho of the held-out loss; default: rho

    def validate(self) -> None:
        for value in [self.rho, *self.rho_range, *([self.eval_rho] if self.eval_rho is not None else [])]:
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"tokenization rho values must be in (0, 1], got {value}")
        if self.rho_range and (len(self.rho_range) != 2 or self.rho_range[0] > self.rho_range[1]):
            raise ConfigError(f"tokenization.rho_range={self.rho_range} must be [lo, hi] with lo <= hi")


@dataclass
class CheckpointConfig:
    """accelerate save_state folders, written atomically (temp folder, then rename)."""

    every: int = 0  # steps between checkpoints; 0 = only the final one
    keep_last: int = 2  # older checkpoints are deleted
    resume: str = "auto"  # auto (latest in output_dir/checkpoints) | never | PATH to a checkpoint folder

    def validate(self) -> None:
        if self.every < 0 or self.keep_last < 1:
            raise ConfigError("checkpoint.every must be >= 0 and checkpoint.keep_last >= 1")


EXPORT_DTYPES = ("fp32", "bf16")


@dataclass
class ExportConfig:
    """The LoRA files a run exports at its end (`train.export` has the same choice as --dtype)."""

    dtype: str = "fp32"  # fp32 | bf16 (half-size files, as peers ship; output difference in docs/train.md)

    def validate(self) -> None:
        if self.dtype not in EXPORT_DTYPES:
            raise ConfigError(f"export.dtype='{self.dtype}' is not one of {EXPORT_DTYPES}")


@dataclass
class TrackingConfig:
    """accelerate trackers: W&B (offline unless WANDB_MODE says otherwise) and TensorBoard."""

    report_to: list[str] = field(default_factory=lambda: ["wandb", "tensorboard"])  # any of wandb, tensorboard
    project: str = "cinelora"
    run_name: Optional[str] = None  # default: output_dir's folder name
    log_every: int = 1  # steps between tracker logs (metrics.jsonl gets every step)

    def validate(self) -> None:
        unknown = [name for name in self.report_to if name not in TRACKERS]
        if unknown:
            raise ConfigError(f"tracking.report_to has {unknown}; use any of {TRACKERS} (or [] for none)")
        if self.log_every < 1:
            raise ConfigError(f"tracking.log_every={self.log_every} must be >= 1")


@dataclass
class ValidationConfig:
    """Samples from fixed prompts/images during training: mp4 + first/middle/last frames."""

    every: int = 0  # steps between samples; 0 = none during training
    at_end: bool = True  # also sample after the last step
    prompts: list[str] = field(default_factory=lambda: ["a cinematic shot, warm light, film grain"])
    images: list[str] = field(default_factory=list)  # one per prompt; missing ones = a built-in synthetic frame
    height: int = 64
    width: int = 64
    num_frames: int = 9
    steps: int = 4
    guidance_scale: float = 1.0
    seed: int = 0
    fps: int = 16

    def validate(self) -> None:
        if self.every < 0 or self.steps < 1:
            raise ConfigError("validation.every must be >= 0 and validation.steps >= 1")
        if len(self.images) > len(self.prompts):
            raise ConfigError(f"validation.images has {len(self.images)} entries for {len(self.prompts)} prompts")


@dataclass
class TrainConfig:
    """`python -m train.stage1` / `train.stage2` (plain or under `accelerate launch`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    base_lora: Optional[str] = None  # stage 2: the stage-1 LoRA (run folder, checkpoint, export folder or file)
    base_lora_mode: str = "frozen"  # frozen (kept as its own adapter) | merged (fused into the base weights)
    tokenization: TokenizationConfig = field(default_factory=TokenizationConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    max_steps: int = 100  # optimizer steps
    grad_accum: int = 1  # micro-batches per optimizer step
    mixed_precision: str = "no"  # no | bf16 | fp16 (autocast on GPU; LoRA weights stay fp32)
    gradient_checkpointing: bool = False  # recompute block activations in backward (14B: needed)
    seed: int = 0
    cpu_threads: int = 0  # CPU runs only: torch intra-op threads; 0 = torch's default (tiny models: 1 is fastest)
    heldout: bool = True  # held-out loss before and after training -> results.json
    output_dir: str = "runs/train"  # checkpoints/, lora/, samples/, metrics.jsonl, results.json
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def validate(self) -> None:
        for section in (self.model, self.data, self.lora, self.tokenization, self.objective, self.optim,
                        self.checkpoint, self.tracking, self.validation, self.export):
            section.validate()
        from core.models import get_family

        family = get_family(self.model.family)
        if self.lora.image_branch:
            family.image_branch_targets()  # refused for a family without an image branch
        check_frames(self.data.synthetic_frames, "data.synthetic_frames", family.geometry.vae_t)
        check_frames(self.validation.num_frames, "validation.num_frames", family.geometry.vae_t)
        check_size(self.validation.height, self.validation.width, family.geometry.cell_px, "validation.")
        if self.base_lora_mode not in BASE_LORA_MODES:
            raise ConfigError(f"base_lora_mode='{self.base_lora_mode}' is not one of {BASE_LORA_MODES}")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision='{self.mixed_precision}' is not one of {MIXED_PRECISIONS}")
        if self.max_steps < 1 or self.grad_accum < 1 or self.cpu_threads < 0:
            raise ConfigError(f"max_steps={self.max_steps} and grad_accum={self.grad_accum} must be >= 1, "
                              f"cpu_threads={self.cpu_threads} >= 0")


# Inference-side schemas live in core.schema_infer; re-exported so `core.schema` names every key.
from core.schema_infer import (  # noqa: E402, F401  (re-exported; they build on the classes above)
    AB_SCHEDULERS,
    BOUND_COMPLEXITY,
    CAT_SOURCES,
    WARMUP_TOKENS,
    ZERO_OFFLOAD,
    ABConfig,
    BoundConfig,
    CatInferConfig,
    DeepSpeedInferConfig,
    DemoConfig,
)
