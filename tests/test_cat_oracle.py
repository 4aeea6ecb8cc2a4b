"""Perfect-denoiser harness: a perfect model through CAT tokens lands on x0 (fine cells and
region-constant coarse cells) or on the pooled content U(P(x0)) (textured coarse cells), for
Euler and UniPC, with and without CFG; and the correction lives in cat_forward itself."""

from __future__ import annotations

import copy

import pytest
import torch

from cat import Allocation, allocate_from_complexity, build_layout, cat_forward, latent_complexity, oracle_velocity
from cat.tokenizer import coarse_correction, gather_patches, scatter_patches
from infer.oracle import (
    GRID,
    REF,
    VARIANTS,
    FixedPolicy,
    allocations,
    cell_errors,
    clean_latent,
    make_scheduler,
    run_harness,
    sample,
)

EXACT = 1e-5
CLEAN = 1e-3


def test_corrected_cat_lands_on_x0_or_its_pooled_content_for_every_scheduler_and_cfg():
    rows = run_harness(steps=20, variants=VARIANTS[:1])["rows"]
    assert {(r["scheduler"], r["cfg"]) for r in rows} == {
        ("euler", 1.0),
        ("euler", 5.0),
        ("unipc", 1.0),
        ("unipc", 5.0),
    }
    rows = [r for r in rows if not r["arm"].endswith(REF)]  # the reference-detail arms: test_cat_oracle_reference.py
    for r in rows:
        where = f"{r['scheduler']} cfg={r['cfg']} {r['arm']}"
        if r["arm"] in ("uniform", "rho 1"):
            assert r["tokens"] == r["uniform_tokens"] and r["fine"] <= EXACT, where
            continue
        assert r["tokens"] < r["uniform_tokens"], where
        assert r["fine"] <= EXACT, where
        assert r["coarse_region_constant"] <= CLEAN, where
        if r["coarse_textured"] is not None:  # rho 0.5 / 0.25 coarsen textured blocks too
            assert r["coarse_textured_to_pooled"] <= CLEAN, where
            assert r["coarse_textured"] > 0.3, where  # texture below a token is lost (the bound's job), not noise
    assert sum(r["coarse_textured"] is not None for r in rows) == 8  # 2 rhos x 2 schedulers x 2 cfg


@pytest.mark.parametrize("name", ["uncorrected", "renoise", "renoise_uncorrected"])
def test_without_the_correction_coarse_cells_keep_the_starting_noise_and_renoise_is_corrected_too(name):
    _, upsample, pool, correct = next(v for v in VARIANTS if v[0] == name)
    x0, flat = clean_latent(GRID, 0)
    alloc = allocations(x0, GRID)["rho 0.5"]
    for scheduler in ("euler", "unipc"):
        x = sample(
            x0, FixedPolicy(GRID, alloc), make_scheduler(scheduler), upsample=upsample, pool=pool, correct=correct
        )
        err = cell_errors(x, x0, alloc, flat, upsample)
        assert err["fine"] <= EXACT
        if correct:
            assert err["coarse_region_constant"] <= CLEAN and err["coarse_textured_to_pooled"] <= CLEAN
        else:  # the "before" numbers: ~0.73 region-constant, ~1.0 textured
            assert 0.6 < err["coarse_region_constant"] < 0.9 and err["coarse_textured"] > 0.85


def test_bilinear_converges_to_its_own_pooled_content_not_to_x0():
    x0, flat = clean_latent(GRID, 0)
    alloc = allocations(x0, GRID)["rho 0.5"]
    x = sample(x0, FixedPolicy(GRID, alloc), make_scheduler("euler"), upsample="bilinear")
    err = cell_errors(x, x0, alloc, flat, "bilinear")
    assert err["fine"] <= EXACT and err["coarse_textured_to_pooled"] <= CLEAN
    assert err["coarse_region_constant"] > 0.01  # U P is no projection: blends neighbouring tokens


def test_oracle_velocity_is_the_ideal_velocity_on_stock_and_all_fine_tokens():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 16, 3, 16, 16, generator=g), torch.randn(2, 16, 3, 16, 16, generator=g)
    sigma = torch.tensor([0.3, 0.8])
    s = sigma.view(-1, 1, 1, 1, 1)
    noisy = (1 - s) * x0 + s * noise
    ideal = noise - x0
    for layout in (None, build_layout(Allocation.uniform(GRID)), Allocation.uniform(GRID)):
        assert (oracle_velocity(noisy, x0, sigma, layout) - ideal).abs().max() <= EXACT
    per_cell = sigma.view(2, 1).expand(2, 3 * 8 * 8)  # Wan 2.2 style per-token sigma, here equal per sample
    alloc = allocate_from_complexity(latent_complexity(x0), rho=0.5)
    torch.testing.assert_close(oracle_velocity(noisy, x0, per_cell, alloc), oracle_velocity(noisy, x0, sigma, alloc))
    with pytest.raises(ValueError, match="same shape"):
        oracle_velocity(noisy, x0[:, :8], sigma)


def test_cat_forward_adds_the_correction_on_coarse_cells_only(tiny):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 36, 5, 16, 16, generator=g)
    t = torch.full((1,), 600.0)
    text, image = torch.randn(1, 512, 32, generator=g), torch.randn(1, 65, 4, generator=g)
    alloc = allocate_from_complexity(latent_complexity(x[:, :16]), rho=0.5)
    layout = build_layout(alloc)
    with torch.no_grad():
        on = cat_forward(tiny.transformer, x, t, text, image, allocation=layout)
        off = cat_forward(tiny.transformer, x, t, text, image, allocation=layout, correct=False)
    fine = ~layout.coarse_cells.view(5, 8, 1, 8, 1).expand(5, 8, 2, 8, 2).reshape(5, 16, 16)
    assert torch.equal(on[:, :, fine], off[:, :, fine])  # bit-exact where tokens are fine
    noisy = x[:, :16]
    expected = (noisy - scatter_patches(gather_patches(noisy, layout), layout)) / 0.6
    torch.testing.assert_close(on - off, expected, atol=1e-5, rtol=1e-5)
    assert (on - off).abs().max() > 0.1
    with torch.no_grad():  # the sampler's true sigma replaces t / 1000 in the correction
        given = cat_forward(tiny.transformer, x, t, text, image, allocation=layout, sigma=torch.tensor([0.5]))
    torch.testing.assert_close(given - off, expected * 0.6 / 0.5, atol=1e-5, rtol=1e-5)


def test_unipc_correction_at_the_schedulers_sigma_is_exact_and_at_t_over_1000_is_not():
    """UniPC hands integer timesteps: the correction at t / 1000 (cat_forward before the sampler
    passed sigma) leaves region-constant coarse cells ~5e-4 from x0; at the scheduler's sigma, ~0."""
    x0, flat = clean_latent(GRID, 0)
    alloc = allocations(x0, GRID)["rho 0.5"]
    errors = {}
    for timestep_sigma in (False, True):
        x = sample(x0, FixedPolicy(GRID, alloc), make_scheduler("unipc"), timestep_sigma=timestep_sigma)
        errors[timestep_sigma] = cell_errors(x, x0, alloc, flat)["coarse_region_constant"]
    assert errors[False] <= 1e-6 and 2e-4 < errors[True] < 2e-3, errors


def test_per_token_timesteps_use_each_tokens_sigma_and_clean_cells_get_no_correction():
    layout = build_layout(Allocation(GRID, torch.ones(3, 4, 4, dtype=torch.int8)))  # all coarse spatial
    noisy = torch.randn(1, 16, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    packed = gather_patches(noisy, layout)
    sigma = torch.full((1, 3 * 8 * 8), 0.5)
    sigma[:, : 8 * 8] = 0.0  # frame 0 clean (Wan 2.2 TI2V style)
    corr = coarse_correction(noisy, packed, sigma, layout)
    assert torch.equal(corr[:, :, 0], torch.zeros_like(corr[:, :, 0]))
    torch.testing.assert_close(corr[:, :, 1:], coarse_correction(noisy, packed, 0.5, layout)[:, :, 1:])


def test_float64_loss_with_and_without_the_correction_is_the_same(tiny):
    """Stage 2 leaves the correction out of prediction and target alike: the same loss."""
    model = copy.deepcopy(tiny.transformer).double()
    g = torch.Generator().manual_seed(3)
    x0, noise = torch.randn(1, 16, 5, 16, 16, generator=g).double(), torch.randn(1, 16, 5, 16, 16, generator=g).double()
    cond = torch.randn(1, 20, 5, 16, 16, generator=g).double()
    text, image = torch.randn(1, 512, 32, generator=g).double(), torch.randn(1, 65, 4, generator=g).double()
    sigma = torch.tensor([0.05], dtype=torch.float64)
    noisy = (1 - sigma) * x0 + sigma * noise
    layout = build_layout(allocate_from_complexity(latent_complexity(x0), rho=0.5))
    losses = []
    for correct in (True, False):
        with torch.no_grad():
            pred = cat_forward(
                model, torch.cat([noisy, cond], 1), sigma * 1000, text, image, allocation=layout, correct=correct
            )
        target = oracle_velocity(noisy, x0, sigma, layout, correct=correct)
        losses.append(float((pred.double() - target.double()).pow(2).mean()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_cli_writes_json_and_fails_loudly_when_nothing_ran(tmp_path, monkeypatch, capsys):
    import json

    import infer.oracle as oracle
    import infer.oracle_candidates as candidates

    real = oracle.run_harness
    monkeypatch.setattr(oracle, "run_harness", lambda steps, seed, variants: real(2, seed, variants[:1]))
    monkeypatch.setattr(candidates, "run_candidates", lambda steps, seed: [])
    out = tmp_path / "oracle.json"
    assert oracle.main(["--json", str(out), "--steps", "2"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 36 and {r["variant"] for r in rows} == {"corrected"}  # 9 arms x 2 schedulers x 2 CFG
    assert "| corrected | euler | 1 | rho 0.5 |" in capsys.readouterr().out
    monkeypatch.setattr(oracle, "run_harness", lambda steps, seed, variants: {"rows": []})
    assert oracle.main(["--json", str(tmp_path / "none.json")]) == 1
    assert "no runs produced" in capsys.readouterr().err
    assert oracle.main(["--steps", "0"]) == 2


def test_the_scene_takes_the_familys_latent_channels_and_stays_exact_on_wan22():
    """Wan2.2's 48-channel scene (its first latent frame given as the condition) through the sampler:
    the perfect model lands on x0 in fine cells and region-constant coarse cells, as on Wan2.1, and on
    the pooled content elsewhere, except frame 0, which the sampler imposes (the given image); an
    allocation with reference detail reads the reference off frame 0 of the input."""
    from cat import pooled_content
    from core.models import get_family

    wan22 = get_family("wan2.2-ti2v")
    x0, flat = clean_latent(GRID, 0, wan22)
    assert x0.shape == (1, 48, GRID[0], 2 * GRID[1], 2 * GRID[2]) and clean_latent(GRID, 0)[0].shape[1] == 16
    arms = allocations(x0, GRID, reference=True)
    for name in ("rho 0.5", "rho 0.25 +ref"):
        alloc = arms[name]
        assert alloc.uses_reference == name.endswith("+ref")
        x = sample(x0, FixedPolicy(GRID, alloc), make_scheduler("euler"), family=wan22)
        err = cell_errors(x, x0, alloc, flat, "nearest", reference=x0[:, :, :1])
        assert err["fine"] <= EXACT and err["coarse_region_constant"] <= CLEAN, name
        expected = pooled_content(x0, alloc, reference=x0[:, :, :1])
        expected[:, :, 0] = x0[:, :, 0]
        assert (x - expected).abs().max() <= CLEAN, name
        assert (x - x0).abs().mean() > 0.01, name  # some texture was coarsened


def test_the_candidate_runs_go_through_the_sampler_and_only_the_shipped_correction_cleans_coarse_cells():
    """The harness's candidate table (`run_candidates`, what `python -m infer.oracle` appends) runs
    every candidate through `Denoising`: without a fine warm-up only R(x_s)/sigma leaves no noise in
    region-constant coarse cells; the last-fine residual does after two uniform steps."""
    from infer.oracle_candidates import run_candidates

    rows = run_candidates(4, 0)
    by = {(r["candidate"], r["scheduler"], r["warmup"]): r for r in rows}
    assert {s for _, s, _ in by} == {"euler", "unipc"}
    for scheduler in ("euler", "unipc"):
        assert by[("sigma_residual", scheduler, 0)]["coarse_region_constant"] <= 1e-3
        assert by[("none", scheduler, 0)]["coarse_region_constant"] > 0.5
        assert by[("last_fine", scheduler, 0)]["coarse_region_constant"] > 0.5
        assert by[("last_fine", scheduler, 2)]["coarse_region_constant"] <= 1e-3
