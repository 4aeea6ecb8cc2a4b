"""Held-out flow-matching loss: the number that says whether a stage helped.

Every window is scored at the same fixed noise levels with the same seeded noise, so two
adapter states differ only by their weights. Used by the trainer (base vs after, into
results.json), the demo and the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cat.policy import TokenPolicy, UniformPolicy
from core.schema import ModelConfig, ObjectiveConfig, TrainDataConfig
from train.forward import Denoiser
from train.objective import flow_loss, flow_target, heldout_sigmas, noisy_pair, timesteps

_NOISE_SEED_STRIDE = 1_000_003


def window_noise(latents: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * _NOISE_SEED_STRIDE + index)
    return torch.randn(latents.shape, generator=generator, dtype=torch.float32)


@torch.no_grad()
def heldout_loss_sum(denoiser: Denoiser, windows: Sequence[dict], objective: ObjectiveConfig, *, rho: float | None = None,
                     seed: int = 0, rank: int = 0, world: int = 1, family: Any = None) -> tuple[float, int]:
    """(sum of losses, count) over this rank's share of windows x fixed sigmas; reduce across ranks
    (`rho`: the keep ratio of a CAT policy's calls, default the denoiser's policy's own; `family`:
    the model family that builds the transformer input, None = the default family)."""
    from core.models import get_family

    device = next(p.device for p in denoiser.parameters())
    family = family or get_family()
    sigmas = heldout_sigmas(objective)
    was_training = denoiser.training
    denoiser.eval()
    total, count = 0.0, 0
    try:
        for index in range(rank, len(windows), world):
            item = windows[index]
            latents = item["latents"].unsqueeze(0).to(device)
            noise = window_noise(item["latents"], seed, index).unsqueeze(0).to(device)
            condition = item["condition"].unsqueeze(0).to(device)
            text = item["text_embeds"].unsqueeze(0).to(device)
            image = item["image_embeds"].unsqueeze(0).to(device)
            complexity = item["complexity"].unsqueeze(0).to(device) if "complexity" in item else None
            for sigma in sigmas:
                s = sigma.view(1)
                noisy, _ = noisy_pair(latents, noise, s)
                timestep = family.timestep_input(timesteps(s).to(device), condition, noisy)
                pred = denoiser(family.model_input(noisy, condition), timestep, text, image,
                                complexity=complexity, rho=rho)
                target = flow_target(noisy, latents, noise, s, denoiser.last_layout)
                total += float(flow_loss(family.loss_region(pred), family.loss_region(target)))
                count += 1
    finally:
        denoiser.train(was_training)
    return total, count


def heldout_loss(denoiser: Denoiser, windows: Sequence[dict], objective: ObjectiveConfig | None = None, *,
                 rho: float | None = None, seed: int = 0, family: Any = None) -> float:
    """Mean held-out flow-matching loss of one process over all windows."""
    total, count = heldout_loss_sum(denoiser, windows, objective or ObjectiveConfig(), rho=rho, seed=seed, family=family)
    return total / max(count, 1)


def evaluate_loras(model: ModelConfig, prepared_dir: str | Path, loras: Sequence[str | Path] = (), *,
                   policy: TokenPolicy = UniformPolicy(), objective: ObjectiveConfig | None = None,
                   split: str = "val", keyframes: str = "exclude", limit: int = 0, seed: int = 0,
                   components: object | None = None) -> float:
    """Held-out loss of the base model with the given LoRA files stacked (weight 1 each).

    `evaluate_loras(m, d)` = base, `[style]` = after stage 1, `[style, motion]` = after stage 2
    (`policy=cat.CatPolicy(rho=0.5)` scores stage 2's CAT-tokenized windows). Pass `components` to reuse
    loaded ones; the adapters are removed again before returning.
    """
    from core.lora_files import load_lora
    from core.models import load_components
    from train.data import load_windows

    comp = components or load_components(model)
    transformer = comp.transformer
    windows = load_windows(TrainDataConfig(prepared_dir=str(prepared_dir), val_limit=limit), comp.model_id, split,
                           keyframes)
    names = [f"eval_{i}" for i in range(len(loras))]
    try:
        for name, path in zip(names, loras, strict=True):
            load_lora(transformer, path, name)
        if names:
            transformer.set_adapters(names, [1.0] * len(names))
        return heldout_loss(Denoiser(transformer, policy), windows, objective, seed=seed, family=comp.family)
    finally:
        if names:
            transformer.delete_adapters(names)
