"""The A/B's own denoising loop: reproducible, equal to the diffusers pipeline, and CAT changes only tokens."""

from __future__ import annotations

import numpy as np
import torch

from core.models.wan21 import patch_grid
from core.schema import CatInferConfig
from infer.generate import synthetic_frame
from infer.policy import CatPolicy, schedule_factor
from infer.sampler import UniformPolicy, denoise, prepare_conditioning

H, W, T = 64, 64, 9
GRID = patch_grid(T, H, W)  # (3, 4, 4)


def _frame() -> torch.Tensor:
    return torch.from_numpy(np.array(synthetic_frame(H, W))).permute(2, 0, 1)[None].float() / 127.5 - 1


def _flat_clip() -> torch.Tensor:
    """A flat, static reference clip: every region is redundant."""
    return torch.full((1, 3, T, H, W), 0.2)


def test_identical_seeds_give_identical_uniform_outputs_and_match_the_pipeline(tiny):
    cond = prepare_conditioning(tiny, _frame(), "a cinematic shot", T)
    a = denoise(tiny, cond, UniformPolicy(GRID), steps=3, seed=7)
    b = denoise(tiny, cond, UniformPolicy(GRID), steps=3, seed=7)
    c = denoise(tiny, cond, UniformPolicy(GRID), steps=3, seed=8)
    assert torch.equal(a.latents, b.latents)
    assert (a.latents - c.latents).abs().max() > 1e-3
    assert a.tokens_per_step == [GRID[0] * GRID[1] * GRID[2]] * 3
    pipe = tiny.pipeline()
    ref = pipe(image=synthetic_frame(H, W), prompt="a cinematic shot", height=H, width=W, num_frames=T,
               num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(7),
               output_type="latent").frames
    torch.testing.assert_close(a.latents, ref, atol=1e-6, rtol=1e-6)


def test_cat_at_full_budget_is_the_uniform_run(tiny):
    """Thresholds of 0 coarsen nothing: the CAT arm must reproduce the uniform arm bit for bit."""
    cond = prepare_conditioning(tiny, _frame(), "a cinematic shot", T)
    settings = CatInferConfig(thresholds=[0.0, 0.0], latent_thresholds=[0.0, 0.0], warmup_steps=1)
    cat_run = denoise(tiny, cond, CatPolicy(settings, GRID, cond.first_frame), steps=3, seed=3)
    uniform = denoise(tiny, cond, UniformPolicy(GRID), steps=3, seed=3)
    assert torch.equal(cat_run.latents, uniform.latents)
    assert cat_run.tokens_per_step == uniform.tokens_per_step


def test_cat_records_fewer_tokens_on_redundant_content_and_coarser_early_with_a_schedule(tiny):
    flat = _flat_clip()
    cond = prepare_conditioning(tiny, flat[:, :, 0], "a still wall", T)
    uniform_tokens = GRID[0] * GRID[1] * GRID[2]
    settings = CatInferConfig(source="reference")
    run = denoise(tiny, cond, CatPolicy(settings, GRID, cond.first_frame, flat), steps=3, seed=0)
    # flat + static: frame 0 coarse spatial (4 -> 1 per block), frames (1, 2) one spatio-temporal token per block
    assert run.tokens_per_step == [4 + 4] * 3 < [uniform_tokens] * 3
    # image warm-up (spatial only), then rho from the predicted latent; schedule [4, 1]: first half 4x coarser
    settings = CatInferConfig(rho=0.75, warmup_steps=2, schedule=[4.0, 1.0])
    run = denoise(tiny, cond, CatPolicy(settings, GRID, cond.first_frame), steps=4, seed=0)
    tokens = run.tokens_per_step
    assert tokens[0] == GRID[0] * 4  # warm-up from the image: spatial coarsening only, nothing merged in time
    assert tokens[2] > tokens[1]  # the schedule relaxes after the first half
    assert abs(tokens[3] - 0.75 * uniform_tokens) <= 3  # rho from the predicted clean latent, within one move
    assert [i for i, _ in run.allocations] == [0, 2]  # the allocation changed when the latent phase began


def test_schedule_factor_spreads_entries_over_steps():
    assert [schedule_factor([2.0, 1.0], i, 4) for i in range(4)] == [2.0, 2.0, 1.0, 1.0]
    assert [schedule_factor([], i, 3) for i in range(3)] == [1.0, 1.0, 1.0]
