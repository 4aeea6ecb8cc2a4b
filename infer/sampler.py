"""The project's one image-to-video denoising loop over the Wan components, with a pluggable
tokenization (`cat.UniformPolicy` / `cat.CatPolicy`): `infer.generate`, the A/B, the oracle and
training's validation samples all run it.

The diffusers pipeline hides the transformer call; the loop owns it so that uniform and
CAT runs differ only in how the latent is tokenized: same conditioning, same seeded noise, same
scheduler, same LoRA-carrying transformer. Each step is timed (the allocation work of CAT
included, with a CUDA sync on GPU) and its token count recorded.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from cat.api import detail_tokens
from cat.policy import StepPolicy, TokenPolicy
from core.flow import predicted_clean
from core.models import Components as WanComponents
from core.models import encode_condition, encode_image, encode_prompt

# (model input, timestep, text, image embeds, allocation, sigma) -> velocity; sigma is the
# scheduler's own noise level of the step, (B,) float32 (UniPC hands integer timesteps)
ForwardFn = Callable[..., torch.Tensor]  # (x, t, text, image, allocation, sigma, reference=None) -> velocity


@dataclass
class Conditioning:
    """Everything a run is conditioned on, computed once and shared by both arms of the A/B."""

    text: torch.Tensor  # (1, text_tokens, text_dim)
    negative_text: torch.Tensor | None  # present when guidance_scale > 1
    image_embeds: torch.Tensor | None  # CLIP penultimate states of the first frame (None: no image encoder)
    condition: torch.Tensor  # the family's: Wan2.1 (1, 20, F', H/8, W/8) mask + latent; Wan2.2 the first latent frame
    first_frame: torch.Tensor  # (1, 3, H, W) in [-1, 1]
    num_frames: int
    seconds: float = 0.0  # wall time of the encoders
    still: torch.Tensor | None = None  # the first frame held still, as latents (CAT's reference detail; made on first use)


@dataclass
class StepRecord:
    step: int
    timestep: float
    tokens: int
    seconds: float
    detail_tokens: int = 0  # coarse tokens that restore the conditioning image's sub-token detail


@dataclass
class DenoiseResult:
    latents: torch.Tensor  # (1, 16, F', H/8, W/8), normalised
    steps: list[StepRecord] = field(default_factory=list)
    allocations: list[tuple[int, Any]] = field(default_factory=list)  # (first step, allocation) when it changed

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.steps)

    @property
    def tokens_per_step(self) -> list[int]:
        return [s.tokens for s in self.steps]

    @property
    def detail_tokens_per_step(self) -> list[int]:
        return [s.detail_tokens for s in self.steps]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_pil(frame: torch.Tensor) -> Image.Image:
    """(3, H, W) in [-1, 1] -> RGB PIL image (what the CLIP processor of the pipeline receives)."""
    arr = ((frame.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def frame_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [-1, 1] (the pipeline's preprocessing at its own size)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1


@torch.no_grad()
def prepare_conditioning(
    comp: WanComponents, first_frame: torch.Tensor, prompt: str, num_frames: int,
    negative_prompt: str = "", guidance_scale: float = 1.0,
) -> Conditioning:
    """Text, CLIP image and VAE condition of one clip's first frame (1, 3, H, W) in [-1, 1]."""
    synchronize(comp.device)
    start = time.perf_counter()
    text = encode_prompt(comp, [prompt])
    negative = encode_prompt(comp, [negative_prompt]) if guidance_scale > 1.0 else None
    cond = conditioning_from_embeds(comp, first_frame, text, negative, num_frames)
    synchronize(comp.device)
    cond.seconds = time.perf_counter() - start
    return cond


@torch.no_grad()
def conditioning_from_embeds(
    comp: WanComponents, first_frame: torch.Tensor, text: torch.Tensor, negative_text: torch.Tensor | None,
    num_frames: int, image: Image.Image | None = None,
) -> Conditioning:
    """`prepare_conditioning` from text embeddings computed earlier (training samples: the text
    encoder is gone by then); `image`: the PIL first frame when at hand (else rebuilt from the tensor)."""
    first_frame = first_frame.to(comp.device, torch.float32)
    negative = negative_text.to(comp.device, comp.dtype) if negative_text is not None else None
    image_embeds = encode_image(comp, [image if image is not None else to_pil(first_frame[0])])
    image_embeds = image_embeds.to(comp.dtype) if image_embeds is not None else None  # None: no image encoder
    condition = encode_condition(comp, first_frame, num_frames)
    return Conditioning(text.to(comp.device, comp.dtype), negative, image_embeds, condition, first_frame, num_frames)


def initial_noise(seed: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Seeded Gaussian noise drawn on the CPU, so a seed gives the same start on any device."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device)


def stock_forward(transformer: Any) -> ForwardFn:
    """The model's own forward, ignoring any allocation (the uniform arm)."""

    def run(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor, allocation: Any,
            sigma: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> torch.Tensor:
        return transformer(x, t, text, encoder_hidden_states_image=image, return_dict=False)[0]

    return run


def mixed_forward(transformer: Any) -> ForwardFn:
    """Stock forward while the allocation is None (warm-up), `cat.cat_forward` otherwise; the
    allocation's index tensors (`cat.Layout`) are built once per allocation, not per call."""
    import cat
    from infer.parallel import gathered_edge_params

    stock = stock_forward(transformer)
    cache: dict[int, Any] = {}

    def run(x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor, allocation: Any,
            sigma: torch.Tensor | None = None, reference: torch.Tensor | None = None) -> torch.Tensor:
        if allocation is None:
            return stock(x, t, text, image, None)
        key = id(allocation)
        if key not in cache:
            cache.clear()
            cache[key] = (allocation, cat.build_layout(allocation, allocation.grid).to(x.device))
        with gathered_edge_params(transformer):
            return cat.cat_forward(transformer, x, t, text, encoder_hidden_states_image=image, allocation=cache[key][1],
                                   sigma=sigma, reference=reference)

    return run


@torch.no_grad()
def still_reference(comp: WanComponents, cond: Conditioning, policy: Any, latents: torch.Tensor) -> torch.Tensor | None:
    """The reference CAT's detail tokens restore: the first frame held still, as latents
    (`ModelFamily.still_latent`, encoded once per conditioning and kept on it); None for uniform
    runs and inputs without a conditioning image."""
    from cat.policy import UniformPolicy

    if isinstance(policy, UniformPolicy):
        return None
    if cond.still is None:
        if comp.family.reference_latent(comp.family.model_input(latents, cond.condition)) is None:
            return None  # no image in the input (e.g. a one-frame Wan2.2 clip): plain CAT tokens
        first = cond.first_frame.to(comp.device, comp.dtype)
        cond.still = comp.family.still_latent(comp, first, cond.num_frames).to(comp.dtype)
    return cond.still


class Denoising:
    """One denoising run, advanced a step at a time so two runs can be interleaved (`lockstep`)."""

    def __init__(self, comp: WanComponents, cond: Conditioning, policy: TokenPolicy | StepPolicy, *, steps: int,
                 seed: int, guidance_scale: float = 1.0, forward: ForwardFn | None = None,
                 reference: torch.Tensor | None = None) -> None:
        """`policy`: a `cat.UniformPolicy` / `cat.CatPolicy` (bound to this run; `reference`: the
        clip for `source: reference`), or a policy already bound to a run (`cat.policy.StepPolicy`)."""
        from infer.policy import step_policy

        geometry = comp.family.geometry
        h_lat, w_lat = cond.condition.shape[-2:]
        f_lat = geometry.latent_frames(cond.num_frames)  # a condition may hold the first frame only
        grid = (f_lat // geometry.patch[0], h_lat // geometry.patch[1], w_lat // geometry.patch[2])
        self.comp, self.cond = comp, cond
        self.num_steps, self.guidance_scale = steps, guidance_scale
        self.forward = forward or mixed_forward(comp.transformer)
        self.scheduler = copy.deepcopy(comp.scheduler)
        self.scheduler.set_timesteps(steps, device=comp.device)
        self.latents = initial_noise(seed, (1, comp.family.geometry.noisy_channels, f_lat, h_lat, w_lat), comp.device)
        self.reference = still_reference(comp, cond, policy, self.latents)
        self.policy = step_policy(policy, grid, cond.first_frame, reference, geometry, self.reference)
        self.result = DenoiseResult(self.latents)
        self.peak_memory = 0.0  # max CUDA bytes allocated during this run's steps
        self._x0: torch.Tensor | None = None
        self._last: Any = "unset"

    @property
    def done(self) -> bool:
        return len(self.result.steps) >= self.num_steps

    @torch.no_grad()
    def step(self) -> StepRecord:
        """One timed step: allocation, transformer call(s), x0 estimate, scheduler update."""
        comp, cond, i = self.comp, self.cond, len(self.result.steps)
        t = self.scheduler.timesteps[i]
        synchronize(comp.device)
        if comp.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(comp.device)
        start = time.perf_counter()
        allocation = self.policy.allocation(i, self.num_steps, self._x0)
        x = comp.family.model_input(self.latents, cond.condition).to(comp.dtype)
        timestep = comp.family.timestep_input(t.expand(x.shape[0]), cond.condition, self.latents)
        sigma = self.scheduler.sigmas[i].to(comp.device, torch.float32).expand(x.shape[0])
        velocity = self.forward(x, timestep, cond.text, cond.image_embeds, allocation, sigma, reference=self.reference)
        if cond.negative_text is not None:
            uncond = self.forward(x, timestep, cond.negative_text, cond.image_embeds, allocation, sigma,
                                  reference=self.reference)
            velocity = uncond + self.guidance_scale * (velocity - uncond)
        x0 = predicted_clean(self.latents, velocity, float(self.scheduler.sigmas[i]))
        self._x0 = comp.family.apply_condition(x0, cond.condition)  # a given first frame is known exactly
        self.latents = self.scheduler.step(velocity, t, self.latents, return_dict=False)[0]
        synchronize(comp.device)
        record = StepRecord(i, float(t), self.policy.tokens(allocation), time.perf_counter() - start,
                            detail_tokens(allocation))
        if comp.device.type == "cuda":
            self.peak_memory = max(self.peak_memory, float(torch.cuda.max_memory_allocated(comp.device)))
        self.result.steps.append(record)
        if allocation is not self._last:
            self.result.allocations.append((i, allocation))
            self._last = allocation
        if self.done:
            self.result.latents = comp.family.apply_condition(self.latents, cond.condition)
        return record


def lockstep(runs: list[Denoising], progress: Any = None) -> None:
    """Advance several runs step by step, alternating which goes first at each step, so load
    drifting over seconds on a shared machine hits paired steps alike."""
    i = 0
    while not all(r.done for r in runs):
        order = runs if i % 2 == 0 else runs[::-1]
        for run in order:
            if not run.done:
                run.step()
                if progress is not None:
                    progress.update(1)
        i += 1


def denoise(
    comp: WanComponents,
    cond: Conditioning,
    policy: TokenPolicy | StepPolicy,
    *,
    steps: int,
    seed: int,
    guidance_scale: float = 1.0,
    forward: ForwardFn | None = None,
    progress: Any = None,
    reference: torch.Tensor | None = None,
) -> DenoiseResult:
    """Run `steps` denoising steps from seeded noise; the policy picks each step's tokenization."""
    run = Denoising(comp, cond, policy, steps=steps, seed=seed, guidance_scale=guidance_scale, forward=forward,
                    reference=reference)
    lockstep([run], progress)
    return run.result


@torch.no_grad()
def decode(comp: WanComponents, latents: torch.Tensor) -> torch.Tensor:
    """Normalised latents -> pixel clip (1, 3, T, H, W) in [-1, 1] (float32, on the CPU)."""
    vae = comp.vae
    video = vae.decode(comp.family.denormalize_latents(vae, latents.to(vae.device, vae.dtype)), return_dict=False)[0]
    return video.float().clamp(-1, 1).cpu()


def make_scheduler(name: str, flow_shift: float) -> Any:
    """Wan's flow-matching schedulers: UniPC (the pipeline's default) or plain Euler."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=flow_shift)
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=flow_shift)
