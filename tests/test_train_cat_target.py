"""Stage 2's target on CAT tokens is the perfect model's CAT velocity (cat.oracle_velocity)."""

from __future__ import annotations

import torch

import cat
from train.evaluate import heldout_loss_sum
from train.forward import Denoiser
from train.objective import flow_target, noisy_pair

F_, H, W = 3, 16, 16


def window(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(16, F_, H, W, generator=g)
    latents[:, :, :, : W // 2] = 0.3  # a flat half: where CAT coarsens
    complexity = torch.rand(2, F_, H // 2, W // 2, generator=g) + 1.0
    complexity[:, :, :, : W // 4] = 0.0
    return {
        "latents": latents,
        "condition": torch.zeros(20, F_, H, W),
        "text_embeds": torch.zeros(4, 8),
        "image_embeds": torch.zeros(2, 8),
        "complexity": complexity,
    }


class PerfectDenoiser(Denoiser):
    """Knows x0; tokenizes like `Denoiser` (same allocation from complexity and rho)."""

    def __init__(self, x0: torch.Tensor):
        super().__init__(torch.nn.Linear(1, 1), cat.CatPolicy(rho=0.5))
        self.x0 = x0

    def forward(self, hidden_states, timestep, text, image=None, complexity=None, rho=None):
        maps = cat.Complexity(spatial=complexity[:, 0].float(), temporal=complexity[:, 1].float())
        self.last_layout = cat.build_layout(cat.allocate_from_complexity(maps, rho=rho))
        return cat.oracle_velocity(hidden_states[:, :16], self.x0, timestep / 1000, self.last_layout, correct=False)


def test_a_perfect_model_has_zero_stage2_loss_and_the_old_target_would_not():
    item = window()
    latents = item["latents"].unsqueeze(0)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    perfect = PerfectDenoiser(latents)
    sigma = torch.tensor([0.4])
    noisy, stock_target = noisy_pair(latents, noise, sigma)
    pred = perfect(
        torch.cat([noisy, item["condition"][None]], 1), sigma * 1000, None, complexity=item["complexity"][None], rho=0.5
    )
    layout = perfect.last_layout
    coarse = layout.coarse_cells.view(F_, H // 2, 1, W // 2, 1).expand(F_, H // 2, 2, W // 2, 2).reshape(F_, H, W)
    target = flow_target(noisy, latents, noise, sigma, layout)
    assert (pred - target).abs().max() <= 1e-5
    assert (pred - stock_target)[:, :, coarse].abs().mean() > 0.3  # noise - x0 cannot be met on coarse cells
    assert torch.allclose(target[:, :, ~coarse], stock_target[:, :, ~coarse], atol=1e-5)  # fine cells unchanged
    assert torch.equal(flow_target(noisy, latents, noise, sigma, None), stock_target)
    # the held-out loss the trainer reports goes through the same target
    total, count = heldout_loss_sum(PerfectDenoiser(latents), [item], _objective(), rho=0.5)
    assert count == 2 and total / count <= 1e-9


def _objective():
    from core.schema import ObjectiveConfig

    return ObjectiveConfig(heldout_sigmas=2)


def test_denoiser_records_its_layout_and_leaves_the_correction_to_the_target(tiny):
    item = window(2)
    x = torch.cat([item["latents"], item["condition"]])[None]
    t = torch.tensor([500.0])
    text, image = torch.randn(1, 512, 32), torch.randn(1, 65, 4)
    model = Denoiser(tiny.transformer, cat.CatPolicy(rho=0.5))
    with torch.no_grad():
        out = model(x, t, text, image, complexity=item["complexity"][None], rho=0.5)
        assert model.last_layout is not None and not model.last_layout.uniform
        plain = cat.cat_forward(tiny.transformer, x, t, text, image, allocation=model.last_layout, correct=False)
        assert torch.equal(out, plain)
        model(x, t, text, image, complexity=item["complexity"][None], rho=1.0)
    assert model.last_layout is None  # stock tokens at rho 1: the stock target
