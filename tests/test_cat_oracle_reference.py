"""Reference detail under the perfect model: coarse tokens that restore the conditioning image's
sub-token detail land exactly on static texture (Euler, UniPC, CFG, renoise), on the pooled
content + R(ref) elsewhere, and the harness's JSON says so (docs/cat.md, "Reference detail")."""

from __future__ import annotations

import json

import pytest
import torch

from cat import Allocation, pooled_content
from infer.oracle import GRID, REF, VARIANTS, FixedPolicy, allocations, make_scheduler, sample, scene

EXACT = 1e-5
CLEAN = 1e-3


@pytest.fixture(scope="module")
def harness_json(tmp_path_factory):
    """`python -m infer.oracle --json --steps 8`, variants corrected and renoise, no candidates."""
    import infer.oracle as oracle
    import infer.oracle_candidates as candidates

    keep = tuple(v for v in VARIANTS if v[0] in ("corrected", "renoise"))
    real = oracle.run_harness
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(oracle, "run_harness", lambda steps, seed, variants: real(steps, seed, keep))
        mp.setattr(candidates, "run_candidates", lambda steps, seed: [])
        out = tmp_path_factory.mktemp("oracle") / "oracle.json"
        assert oracle.main(["--json", str(out), "--steps", "8"]) == 0  # exact at any step count
    return json.loads(out.read_text())


def test_json_has_the_static_class_and_reference_arms_land_exactly(harness_json):
    rows = harness_json["rows"]
    ref_rows = [r for r in rows if r["arm"].endswith(REF)]
    assert {r["arm"] for r in ref_rows} == {"rho 0.5 +ref", "rho 0.25 +ref", "thresholds default +ref"}
    assert {(r["variant"], r["scheduler"], r["cfg"]) for r in ref_rows} == {
        (v, s, g) for v in ("corrected", "renoise") for s in ("euler", "unipc") for g in (1.0, 5.0)
    }
    assert all("coarse_static" in r and "detail_cells" in r for r in rows)
    for r in ref_rows:
        where = f"{r['variant']} {r['scheduler']} cfg={r['cfg']} {r['arm']}"
        assert r["detail_cells"] > 0 and r["tokens"] < r["uniform_tokens"], where
        assert r["fine"] <= EXACT, where
        assert r["coarse_region_constant"] <= CLEAN, where
        assert r["coarse_static"] is not None and r["coarse_static"] <= CLEAN, where  # static texture kept exactly
        if r["coarse_textured"] is not None:
            assert r["coarse_textured_to_pooled"] <= CLEAN, where  # U(P(target)) + R(ref)
    # without reference maps the static texture under a coarse token is lost, as any texture
    plain = [r for r in rows if r["arm"] in ("rho 0.5", "rho 0.25")]
    assert plain and all(r["coarse_static"] > 0.3 and r["detail_cells"] == 0 for r in plain)
    # the threshold default with reference maps coarsens more and is exact everywhere (the moving
    # texture it coarsens is frame 0's: the reference itself)
    by_arm = {(r["variant"], r["scheduler"], r["cfg"], r["arm"]): r for r in rows}
    for (variant, sched, cfg, arm), r in by_arm.items():
        if arm == "thresholds default +ref":
            before = by_arm[(variant, sched, cfg, "thresholds default")]
            assert r["tokens"] < before["tokens"]
            assert max(v for k, v in r.items() if k.startswith("coarse_") and v is not None) <= CLEAN


def test_stock_and_rho_1_stay_exact(harness_json):
    for r in harness_json["rows"]:
        if r["arm"] in ("uniform", "rho 1"):
            assert r["tokens"] == r["uniform_tokens"] and r["fine"] <= EXACT and r["detail_cells"] == 0


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_moving_texture_on_detail_tokens_ends_at_pooled_content_plus_the_reference_residual(scheduler):
    s = scene(GRID, 0)
    alloc = allocations(s.x0, GRID, reference=True)[f"rho 0.25{REF}"]
    moving = ~s.flat & ~s.static
    assert bool((alloc.cell_detail() & moving)[1:].any()) is False  # moving texture after frame 0: plain
    assert bool((alloc.cell_detail() & moving)[0].any())  # frame 0 is the reference: detail
    x = sample(s.x0, FixedPolicy(GRID, alloc), make_scheduler(scheduler))
    target = pooled_content(s.x0, alloc, reference=s.reference)
    assert (x - target).abs().max() <= CLEAN
    coarse_moving = (alloc.cell_levels() > 0) & moving
    err = (x - s.x0).abs().mean(dim=1)[0].view(3, 8, 2, 8, 2).mean(dim=(2, 4))
    assert float(err[0][coarse_moving[0]].max()) <= CLEAN  # frame 0 restored exactly
    assert float(err[1:][coarse_moving[1:]].min()) > 0.1  # later frames: the pooled content only


def test_a_detail_allocation_without_an_image_in_the_input_fails_in_one_line():
    s = scene(GRID, 0)
    alloc = allocations(s.x0, GRID, reference=True)[f"thresholds default{REF}"]
    no_image = torch.zeros(1, 20, *s.x0.shape[2:])  # Wan2.1 condition with the mask at 0: no image
    with pytest.raises(ValueError, match="no reference latent was given") as info:
        sample(s.x0, FixedPolicy(GRID, alloc), make_scheduler("euler"), condition=no_image, steps=2)
    assert "\n" not in str(info.value)


def test_ab_oracle_column_replays_detail_allocations(tiny):
    """`ab_latent_errors` (the A/B's perfect-model column) with an allocation that restores the
    reference's detail everywhere: the CAT arm lands on U(P(x0)) + R(ref), ref = the clip's first
    frame held still, encoded by the same VAE (what the sampler restores)."""
    from core.models import encode_video
    from infer.oracle import ab_latent_errors

    g = torch.Generator().manual_seed(0)
    clip = torch.rand(1, 3, 9, 64, 64, generator=g) * 2 - 1
    grid = (3, 4, 4)
    levels = torch.ones(3, 2, 2, dtype=torch.int8)
    alloc = Allocation(grid, levels, {"mode": "test"}, torch.ones(3, 2, 2, dtype=torch.bool))
    errors = ab_latent_errors(tiny, clip, [(0, alloc)], steps=4, seed=0)
    x0 = encode_video(tiny, clip).float()
    still = tiny.family.still_latent(tiny, clip[:, :, 0], clip.shape[2]).float()
    expected = float((pooled_content(x0, alloc, reference=still) - x0).abs().mean())
    # a causal VAE encodes frame 0 alone: its one latent frame is a worse reference than the still clip's
    assert float((pooled_content(x0, alloc, reference=x0[:, :, :1]) - x0).abs().mean()) > 2 * expected
    assert errors["uniform"] <= EXACT
    assert expected > 1e-3 and errors["cat"] == pytest.approx(expected, abs=EXACT)


def test_the_still_latent_is_the_latent_of_a_static_clip_and_differs_from_its_first_frame(tiny):
    """`ModelFamily.still_latent` equals the VAE latent of the clip made of the image held still, and
    the tiny causal VAE's later latent frames of that clip differ from latent frame 0 (why the
    reference is the still clip, not frame 0)."""
    from core.models import encode_video

    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    still = tiny.family.still_latent(tiny, image, 9)
    assert torch.equal(still, encode_video(tiny, image[:, :, None].expand(-1, -1, 9, -1, -1)))
    assert float((still[:, :, 1:] - still[:, :, :1]).abs().mean()) > 0.01
