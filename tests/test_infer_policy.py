"""Reference detail at inference: the step policy reads maps against the conditioning image
(`source: reference` from the clip, `source: predicted` from x0 against the image's clean latent
the sampler hands it), and generation records the tokens that restore the image's detail."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import cat
from cat.api import detail_tokens
from cat.policy import CatPolicy
from infer.policy import CatSteps

T, H, W = 9, 64, 64
GRID = (3, 4, 4)  # Wan2.1 cells of 16 px, T = 1 + 4 (F' - 1)


def static_textured_clip(seed: int = 0) -> torch.Tensor:
    """(1, 3, T, H, W) in [-1, 1]: one random texture held on every frame (a static camera on a
    textured wall): plain pooling loses the texture everywhere, the reference frame restores it."""
    g = torch.Generator().manual_seed(seed)
    frame = torch.rand(1, 3, 1, H, W, generator=g) * 2 - 1
    return frame.expand(-1, -1, T, -1, -1).contiguous()


def test_reference_source_coarsens_a_static_textured_clip_with_detail():
    clip = static_textured_clip()
    plain = cat.allocate(clip, GRID, thresholds=(0.7, 1.0))
    assert plain.is_uniform  # textured: pooling alone would lose it, nothing coarsened
    steps = CatSteps(CatPolicy(source="reference", thresholds=(0.7, 1.0)), GRID, clip[:, :, 0], reference=clip)
    alloc = steps.allocation(0, 4, None)
    assert alloc is not None and alloc.uses_reference and alloc.info["source"] == "reference"
    uniform = GRID[0] * GRID[1] * GRID[2]
    # static everywhere: frame 0 alone as spatial tokens, frames (1, 2) merged in time, all restoring detail
    assert steps.tokens(alloc) == 4 + 4 < uniform
    assert detail_tokens(alloc) == 8 and bool(alloc.cell_detail().all())


def test_allocate_reads_a_latent_against_its_reference_latent():
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(1, 16, 1, 8, 8, generator=g)
    static = ref.expand(-1, -1, 3, -1, -1).contiguous()
    assert cat.allocate(static, GRID, thresholds=(0.5, 0.3)).is_uniform
    for reference in (ref, True):  # the tensor, or the latent's own frame 0
        alloc = cat.allocate(static, GRID, thresholds=(0.5, 0.3), reference=reference)
        assert detail_tokens(alloc) == alloc.num_tokens == 8
    with pytest.raises(ValueError, match="pass reference=True, not a tensor"):
        cat.allocate(static_textured_clip(), GRID, thresholds=(0.7, 1.0), reference=ref)


def test_predicted_source_measures_x0_against_the_reference_latent():
    """A perfect x0 that is static (every latent frame = the image's latent) gives detail tokens
    once the policy has the reference latent; without it the texture keeps every token fine."""
    g = torch.Generator().manual_seed(2)
    ref = torch.randn(1, 16, 1, 8, 8, generator=g)
    x0 = ref.expand(-1, -1, 3, -1, -1).contiguous()
    policy = CatPolicy(source="predicted", warmup_steps=1, warmup_tokens="uniform")
    first = torch.zeros(1, 3, H, W)
    with_ref = CatSteps(policy, GRID, first, reference_latent=ref)
    assert with_ref.allocation(0, 4, None) is None  # warm-up: uniform tokens
    alloc = with_ref.allocation(1, 4, x0)
    assert alloc is not None and alloc.info["source"] == "predicted" and detail_tokens(alloc) == 8
    assert CatSteps(policy, GRID, first).allocation(1, 4, x0) is None  # plain maps: textured, all fine


def test_image_warm_up_stays_plain():
    clip = static_textured_clip()
    steps = CatSteps(
        CatPolicy(source="predicted", thresholds=(100.0, 1.0)),
        GRID,
        clip[:, :, 0],
        reference_latent=torch.zeros(1, 16, 1, 8, 8),
    )
    alloc = steps.allocation(0, 4, None)
    assert alloc is not None and alloc.info["source"] == "image" and not alloc.uses_reference


def test_the_sampler_hands_the_policy_the_image_latent_and_a_perfect_model_lands_on_x0():
    """The sampler hands the policy the image held still (`Conditioning.still`, encoded once); with a
    perfect model of a static textured x0, the predicted-source allocations restore the image's
    detail and the run still lands on x0 (what plain pooling could not do with fewer tokens)."""
    from core.models import get_family
    from infer.oracle import perfect_forward
    from infer.sampler import Conditioning, Denoising, lockstep, make_scheduler

    family = get_family()
    g = torch.Generator().manual_seed(3)
    ref = torch.randn(1, 16, 1, 8, 8, generator=g)
    x0 = ref.expand(-1, -1, 3, -1, -1).contiguous()
    condition = torch.zeros(1, 20, 3, 8, 8)
    condition[:, :4, :1] = 1.0  # the mask marks frame 0 as given
    condition[:, 4:, :1] = ref  # the image's latent (Wan2.1: condition channels 4:20)
    cond = Conditioning(torch.zeros(1, 1, 1), None, torch.zeros(1, 1, 1), condition, torch.zeros(1, 3, H, W), T)
    cond.still = x0  # no VAE here: the still image's latent, as `ModelFamily.still_latent` would encode it
    comp = SimpleNamespace(
        device=torch.device("cpu"),
        dtype=torch.float32,
        scheduler=make_scheduler("unipc", 3.0),
        transformer=None,
        family=family,
    )
    policy = CatPolicy(source="predicted", warmup_steps=2, warmup_tokens="uniform", refresh_every=1)
    run = Denoising(comp, cond, policy, steps=8, seed=0, forward=perfect_forward(x0, x0, None))
    assert torch.equal(run.policy.reference_latent, x0)
    lockstep([run])
    detail = run.result.detail_tokens_per_step
    assert detail[:2] == [0, 0] and min(detail[2:]) > 0
    assert max(run.result.tokens_per_step[2:]) < 3 * 4 * 4
    assert float((run.result.latents - x0).abs().max()) <= 1e-4


@pytest.mark.parametrize("family", ["wan2.1-i2v", "wan2.2-ti2v"])
def test_generate_with_cat_records_detail_tokens(family, tiny_cfg, tmp_path):
    """generate with CAT on the tiny Wan2.1 and Wan2.2 end to end: detail tokens in generate.json
    and in the overlay's caption."""
    from core.schema import CatInferConfig, GenerateConfig, ModelConfig
    from infer.generate import generate

    model = (
        tiny_cfg
        if family == "wan2.1-i2v"
        else ModelConfig(family=family, cache_dir=str(tmp_path / "cache"), device="cpu")
    )
    size = 64 if family == "wan2.1-i2v" else 128  # Wan2.2: 32-px cells
    cfg = GenerateConfig(
        model=model,
        height=size,
        width=size,
        num_frames=T,
        steps=3,
        seed=0,
        cat=CatInferConfig(rho=0.5, warmup_steps=1, refresh_every=1),
        output_dir=str(tmp_path / "out"),
    )
    info = generate(cfg, progress=False)
    data = json.loads((tmp_path / "out" / "generate.json").read_text())
    assert data["detail_tokens"] == info["detail_tokens"] and len(data["detail_tokens"]) == 3
    assert data["detail_tokens"][0] == 0 and max(data["detail_tokens"][1:]) > 0  # image warm-up: plain
    assert all(d <= t for d, t in zip(data["detail_tokens"], data["tokens"], strict=True))
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 0


def test_overlay_tints_detail_tokens_apart_from_plain_ones(tmp_path):
    """Plain coarse tokens blue (spatial) / orange (spatio-temporal); those restoring the reference's
    detail green / magenta; the caption counts them."""
    import numpy as np
    from PIL import Image

    from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation
    from cat.overlay import draw_allocation

    levels = torch.zeros(3, 2, 2, dtype=torch.int8)
    levels[0] = SPATIAL
    levels[1:, 0] = SPATIOTEMPORAL  # top block row of frames (1, 2) merged in time
    detail = torch.zeros(3, 2, 2, dtype=torch.bool)
    detail[0, :, 0] = True  # left column of frame 0
    detail[1:, 0, 1] = True  # top-right pair
    alloc = Allocation(GRID, levels, {}, detail)
    assert detail_tokens(alloc) == 2 + 1
    img = np.asarray(Image.open(draw_allocation(torch.zeros(1, 3, T, H, W), alloc, tmp_path / "a.png")).convert("RGB"))
    img = img.astype(int)

    def colour(f: int, h: int, w: int) -> str:
        r, g, b = img[16 * h + 14, W * f + 16 * w + 8]
        if max(r, g, b) - min(r, g, b) < 3:
            return "grey"
        if g > r + 50 and g > b + 30:
            return "green"
        if r > g + 50 and b > g + 50:
            return "magenta"
        return "blue" if b > r + 50 else "orange" if r > b + 50 else "?"

    assert [colour(0, h, w) for h in (0, 2) for w in (0, 2)] == ["green", "blue", "green", "blue"]
    assert [colour(f, h, w) for f in (1, 2) for h, w in ((0, 0), (0, 2), (2, 0))] == ["orange", "magenta", "grey"] * 2
