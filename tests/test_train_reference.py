"""Stage 2 with reference detail: the third complexity map changes which regions are coarse, not
the loss on given levels (the detail term is part of the correction, which cancels); the held-out
loss and the training samples run with detail allocations."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import cat
from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation
from core.schema import ObjectiveConfig, ValidationConfig
from train.evaluate import heldout_loss_sum
from train.forward import Denoiser, token_shares
from train.objective import flow_loss, flow_target, noisy_pair

F_, H, W = 3, 16, 16  # latent frames and size: a (3, 8, 8) patch grid, one time pair


def condition_of(x0: torch.Tensor, given: bool = True) -> torch.Tensor:
    """Wan2.1's 20 condition channels: the mask marks frame 0 given (or not), then the image latent on frame 0."""
    b, _, f, h, w = x0.shape
    mask = torch.zeros(b, 4, f, h, w, dtype=x0.dtype)
    mask[:, :, 0] = 1.0 if given else 0.0
    latent = torch.zeros_like(x0)
    latent[:, :, 0] = x0[:, :, 0]
    return torch.cat([mask, latent], dim=1)


def levels_and_detail() -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and spatio-temporal coarse blocks, part of each kind flagged for reference detail."""
    levels = torch.zeros(F_, H // 4, W // 4, dtype=torch.int8)
    levels[0, :2, :2] = SPATIAL
    levels[1, :2, :2] = SPATIAL
    levels[1:3, 2:, :] = SPATIOTEMPORAL
    detail = torch.zeros(levels.shape, dtype=torch.bool)
    detail[0, :2, :1] = True
    detail[1, 0, 0] = True
    detail[1:3, 2:, :2] = True
    return levels, detail


def window(seed: int = 0, maps: int = 3) -> dict:
    """A cached-window dict: textured static background (spatial 20, spatial_ref 0) and a smooth moving
    corner (spatial 5, spatial_ref 30)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 16, F_, H, W, generator=g)
    latents[:, :, 1:, :, :] = latents[:, :, :1, :, :]  # static...
    latents[:, :, 1:, :4, :4] += torch.randn(1, 16, F_ - 1, 4, 4, generator=g)  # ...but one corner moves
    spatial = torch.full((F_, H // 2, W // 2), 20.0)
    spatial[:, :2, :2] = 5.0
    spatial_ref = torch.zeros(F_, H // 2, W // 2)
    spatial_ref[1:, :2, :2] = 30.0
    temporal = torch.zeros(F_, H // 2, W // 2)
    temporal[1:, :2, :2] = 30.0
    complexity = torch.stack([spatial, temporal, spatial_ref][:maps])
    return {
        "latents": latents[0],
        "condition": condition_of(latents)[0],
        "text_embeds": torch.randn(512, 32, generator=g),
        "image_embeds": torch.randn(65, 4, generator=g),
        "complexity": complexity,
    }


def test_stage2_loss_is_the_same_with_and_without_detail_flags(tiny):
    """On the same levels (float64 model): the uncorrected prediction and target the trainer uses are
    the same with or without detail flags, and equal the corrected ones (reference detail included)
    up to float32 rounding, although the detail term itself is large."""
    model = copy.deepcopy(tiny.transformer).double().eval()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 16, F_, H, W, generator=g, dtype=torch.float64)
    noise = torch.randn(1, 16, F_, H, W, generator=g, dtype=torch.float64)
    text, image = torch.randn(1, 512, 32, generator=g).double(), torch.randn(1, 65, 4, generator=g).double()
    levels, detail = levels_and_detail()
    layouts = {
        flags: cat.build_layout(Allocation((F_, H // 2, W // 2), levels, detail=detail if flags else None))
        for flags in (False, True)
    }
    assert layouts[True].detail_cells.any() and not layouts[False].detail_cells.any()
    losses, corrected = {}, {}
    for sigma_value in (0.3, 0.8):
        sigma = torch.tensor([sigma_value], dtype=torch.float64)
        noisy, _ = noisy_pair(x0, noise, sigma)
        x_in = torch.cat([noisy, condition_of(x0)], dim=1)
        t = sigma * 1000
        for flags, layout in layouts.items():
            with torch.no_grad():
                pred = cat.cat_forward(model, x_in, t, text, image, allocation=layout, correct=False)
                pred_c = cat.cat_forward(model, x_in, t, text, image, allocation=layout)  # reads the reference
            target = flow_target(noisy, x0, noise, sigma, layout).double()
            target_c = cat.oracle_velocity(noisy, x0, sigma, layout, reference=x0[:, :, :1]).double()
            losses[sigma_value, flags] = float(flow_loss(pred.double(), target))
            corrected[sigma_value, flags] = float(((pred_c.double() - target_c) ** 2).mean())
            if flags:  # the detail term is there, and large, in what the sampler gets
                plain_c = cat.cat_forward(model, x_in, t, text, image, allocation=layouts[False])
                cells = layout.detail_cells.view(F_, H // 2, 1, W // 2, 1).expand(F_, H // 2, 2, W // 2, 2)
                assert (pred_c - plain_c)[:, :, cells.reshape(F_, H, W)].abs().mean() > 0.3
        assert losses[sigma_value, True] == losses[sigma_value, False]
        for flags in (False, True):
            assert corrected[sigma_value, flags] == pytest.approx(losses[sigma_value, flags], rel=1e-5)


def test_the_third_map_is_used_only_when_the_input_carries_the_reference(tiny):
    item = window()
    model = Denoiser(tiny.transformer, cat.CatPolicy(rho=0.5))
    latents = item["latents"][None]
    text, image = item["text_embeds"][None], item["image_embeds"][None]
    t = torch.tensor([500.0])
    runs = {}
    with torch.no_grad():
        for name, condition, maps in (
            ("reference", item["condition"][None], item["complexity"][None]),
            ("no image", condition_of(latents, given=False), item["complexity"][None]),
            ("two maps", item["condition"][None], item["complexity"][None, :2]),
        ):
            model(torch.cat([latents, condition], 1), t, text, image, complexity=maps, rho=0.5)
            runs[name] = (model.last_allocation, token_shares(model.last_allocation))
    alloc, (coarse, detail) = runs["reference"]
    assert alloc.uses_reference and 0 < detail <= coarse < 1
    for name in ("no image", "two maps"):  # no reference: the allocation as before the third map
        assert not runs[name][0].uses_reference and runs[name][1][1] == 0.0
        assert runs[name][0] == runs["two maps"][0]
    # at the same budget the static texture (spatial 20, reference 0) goes coarse before the smooth
    # moving corner (spatial 5, reference 30) only with the reference map
    assert runs["reference"][0].levels[1, 0, 0] == 0 and runs["two maps"][0].levels[1, 0, 0] != 0


@dataclass(frozen=True)
class PlainCat(cat.CatPolicy):
    """The same levels with the detail flags dropped."""

    def from_complexity(self, maps, rho=None):
        alloc = super().from_complexity(maps, rho)
        return Allocation(alloc.grid, alloc.levels, alloc.info)


def test_heldout_loss_runs_on_detail_allocations_and_ignores_the_flags(tiny):
    windows = [window(0), window(1)]
    objective = ObjectiveConfig(heldout_sigmas=2)
    detailed = Denoiser(tiny.transformer, cat.CatPolicy(rho=0.5))
    total, count = heldout_loss_sum(detailed, windows, objective, rho=0.5)
    assert detailed.last_allocation.uses_reference and count == 4 and np.isfinite(total)
    plain = Denoiser(tiny.transformer, PlainCat(rho=0.5))
    assert heldout_loss_sum(plain, windows, objective, rho=0.5) == (total, count)
    assert not plain.last_allocation.uses_reference


def test_stage2_samples_render_with_detail_allocations(tiny, tmp_path, monkeypatch):
    """The sampler's cat_forward reads the reference off the model input (Wan2.1: condition channels)."""
    import cat.tokenizer
    import infer.policy
    from train.samples import SampleRenderer

    real_allocation, real_detail = infer.policy.CatSteps.allocation, cat.tokenizer.reference_detail
    calls = []

    def with_detail(self, step, num_steps, x0):
        alloc = real_allocation(self, step, num_steps, x0)
        return None if alloc is None else Allocation(alloc.grid, alloc.levels, alloc.info, detail=alloc.levels != 0)

    def counted(*args, **kwargs):
        calls.append(1)
        return real_detail(*args, **kwargs)

    vcfg = ValidationConfig(height=64, width=64, num_frames=5, steps=3, seed=4)
    renderer = SampleRenderer(tiny, vcfg, "cpu", cat.CatPolicy(rho=0.5))
    assert [p.name for p in renderer.policies] == ["uniform", "cat"]
    renderer.policies = renderer.policies[1:]  # the CAT sample is the one under test
    frames = {}
    real_write = SampleRenderer._write

    def capture(self, f, prompt, stem):
        frames[stem.name] = f
        return real_write(self, f, prompt, stem)

    monkeypatch.setattr(SampleRenderer, "_write", capture)
    renderer.render(tiny.transformer, tmp_path)
    plain = frames.pop("sample_0_cat")
    monkeypatch.setattr(infer.policy.CatSteps, "allocation", with_detail)
    monkeypatch.setattr(cat.tokenizer, "reference_detail", counted)
    renderer.render(tiny.transformer, tmp_path)
    assert calls and frames["sample_0_cat"].shape == plain.shape
    assert not np.array_equal(frames["sample_0_cat"], plain)  # the reference's detail reached the sample
