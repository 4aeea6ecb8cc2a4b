"""cat_forward: equals the stock forward at full budget (with and without LoRA), and trains."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig

from cat import Allocation, allocate_from_complexity, build_layout, cat_forward, latent_complexity
from cat.forward import embed_conditions, pack, project_out, run_blocks, unpack

GRID = (5, 8, 8)  # 17 frames at 128x128 pixels -> latent (5, 16, 16)


def inputs(batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 36, 5, 16, 16, generator=gen)
    t = torch.full((batch,), 700.0)
    text = torch.randn(batch, 512, 32, generator=gen)
    image = torch.randn(batch, 65, 4, generator=gen)
    return x, t, text, image


def mixed_allocation(x, rho=0.5):
    return allocate_from_complexity(latent_complexity(x[:, :16]), rho=rho)


def with_lora(transformer):
    model = copy.deepcopy(transformer)  # never mutate the shared session fixture
    targets = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_out.0", "ffn.net.2"]
    model.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    return model


@pytest.fixture(scope="module")
def lora_model(tiny):
    return with_lora(tiny.transformer)


@pytest.mark.parametrize("use_lora", [False, True])
def test_full_budget_equals_stock_forward(tiny, lora_model, use_lora):
    model = lora_model if use_lora else tiny.transformer
    x, t, text, image = inputs(batch=2)
    with torch.no_grad():
        stock = model(x, t, text, image).sample
        for alloc in (None, Allocation.uniform(GRID)):
            out = cat_forward(model, x, t, text, image, allocation=alloc)
            assert out.shape == stock.shape
            assert (out - stock).abs().max().item() <= 1e-5
        # the general gather/conv/fractional-RoPE path on an all-fine layout, piece by piece
        tokens, rotary, layout = pack(model, x, Allocation.uniform(GRID), stock_uniform=False)
        temb, proj, context = embed_conditions(model, t, text, image, layout)
        out = unpack(project_out(model, run_blocks(model, tokens, context, proj, rotary), temb), layout)
        assert (out - stock).abs().max().item() <= 1e-5


def test_lora_changes_the_output(tiny, lora_model):
    """Guards the test above: the adapter is active, so equality there is not vacuous."""
    x, t, text, image = inputs()
    with torch.no_grad():
        assert (lora_model(x, t, text, image).sample - tiny.transformer(x, t, text, image).sample).abs().max() > 1e-3


def test_mixed_allocation_runs_fewer_tokens_with_the_right_shape(tiny):
    x, t, text, image = inputs()
    alloc = mixed_allocation(x)
    assert alloc.num_tokens < alloc.uniform_tokens * 0.6
    with torch.no_grad():
        stock = tiny.transformer(x, t, text, image).sample
        for upsample in ("nearest", "bilinear"):
            out = cat_forward(tiny.transformer, x, t, text, image, allocation=alloc, upsample=upsample)
            assert out.shape == stock.shape and torch.isfinite(out).all()
        # a prebuilt layout gives the same result as the allocation
        again = cat_forward(tiny.transformer, x, t, text, image, allocation=build_layout(alloc), upsample="bilinear")
        assert torch.equal(again, out)


def test_batch_shares_one_partition(tiny):
    x, t, text, image = inputs(batch=2, seed=1)
    alloc = mixed_allocation(x)
    with torch.no_grad():
        both = cat_forward(tiny.transformer, x, t, text, image, allocation=alloc)
        for i in range(2):
            one = cat_forward(tiny.transformer, x[i : i + 1], t[i : i + 1], text[i : i + 1], image[i : i + 1], alloc)
            assert (both[i : i + 1] - one).abs().max() <= 1e-5


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_lora_parameters_with_a_mixed_allocation(tiny, checkpointing):
    model = with_lora(tiny.transformer)
    model.train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    x, t, text, image = inputs()
    alloc = mixed_allocation(x, rho=0.4)
    assert alloc.counts()["spatial"] > 0 and alloc.counts()["spatiotemporal"] > 0
    out = cat_forward(model, x, t, text, image, allocation=alloc)
    out.pow(2).mean().backward()
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad for p in lora.values())
    missing = [n for n, p in lora.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"no gradient reached {missing[:3]}"
    frozen = [n for n, p in model.named_parameters() if "lora_" not in n and p.grad is not None]
    assert not frozen


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    grads = []
    x, t, text, image = inputs(seed=2)
    alloc = mixed_allocation(x, rho=0.5)
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = with_lora(tiny.transformer)
        if checkpointing:
            model.enable_gradient_checkpointing()
        cat_forward(model, x, t, text, image, allocation=alloc).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in sorted(model.named_parameters()) if "lora_" in n]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bf16_runs_and_tracks_fp32(tiny):
    model = copy.deepcopy(tiny.transformer).to(torch.bfloat16)
    x, t, text, image = inputs()
    alloc = mixed_allocation(x)
    with torch.no_grad():
        ref = cat_forward(tiny.transformer, x, t, text, image, allocation=alloc)
        out = cat_forward(model, x.bfloat16(), t, text.bfloat16(), image.bfloat16(), allocation=alloc)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05 * ref.abs().mean()


def test_renoise_pooling_restores_the_noise_std(tiny):
    from cat.tokenizer import gather_patches

    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 36, 5, 16, 16, generator=gen)
    layout = build_layout(Allocation(GRID, torch.ones(5, 4, 4, dtype=torch.int8)))  # all coarse spatial
    mean = gather_patches(noise, layout)[:, :, :16]
    renoised = gather_patches(noise, layout, pool="renoise", sigma=torch.tensor([1.0]), generator=gen)[:, :, :16]
    assert mean.std().item() == pytest.approx(0.5, rel=0.1)  # a mean of 4 halves the std
    assert renoised.std().item() == pytest.approx(1.0, rel=0.1)


def test_wrong_grid_is_rejected(tiny):
    x, t, text, image = inputs()
    with pytest.raises(ValueError, match="grid"):
        cat_forward(tiny.transformer, x, t, text, image, allocation=Allocation.uniform((5, 8, 6)))


def test_wrapped_patch_embedding_is_called_as_a_module():
    """A wrapped embedding (e.g. LoRA on patch_embedding) must run as a module; same numbers."""
    from core.models.wan21.forward import embed_patches

    class Wrapped(torch.nn.Conv3d):
        calls = 0

        def forward(self, x):
            Wrapped.calls += 1
            return super().forward(x)

    torch.manual_seed(0)
    plain = torch.nn.Conv3d(6, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    wrapped = Wrapped(6, 8, kernel_size=(1, 2, 2), stride=(1, 2, 2))
    wrapped.load_state_dict(plain.state_dict())
    patches = torch.randn(2, 7, 6, 2, 2)
    expected = plain(patches.permute(0, 1, 2, 3, 4).reshape(14, 6, 1, 2, 2)).view(2, 7, 8)
    torch.testing.assert_close(embed_patches(plain, patches), expected)
    torch.testing.assert_close(embed_patches(wrapped, patches), expected)
    assert Wrapped.calls == 1


def test_a_reused_layout_caches_rotary_and_survives_inference_then_training(tiny):
    x, t, text, image = inputs()
    layout = build_layout(mixed_allocation(x))
    model = with_lora(tiny.transformer)
    with torch.inference_mode():
        first = cat_forward(model, x, t, text, image, allocation=layout)
    assert layout.cache  # tables built once, kept on the layout
    out = cat_forward(model, x, t, text, image, allocation=layout)
    out.pow(2).mean().backward()  # no "inference tensors cannot be saved for backward"
    torch.testing.assert_close(out.detach(), first, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- reference detail
def image_inputs(seed=0):
    """`inputs` with a real image condition: mask channels 16:20 mark frame 0 given."""
    x, t, text, image = inputs(seed=seed)
    x[:, 16:20] = 0.0
    x[:, 16:20, 0] = 1.0
    return x, t, text, image


def detail_pair(x):
    """The same levels without and with detail on the coarse blocks of the left block column."""
    from cat.allocation import Allocation as Alloc

    plain = mixed_allocation(x)
    left = torch.zeros(plain.levels.shape[1:], dtype=torch.bool)
    left[:, :2] = True
    detail = (plain.levels > 0) & left
    assert bool(detail.any()) and bool(((plain.levels > 0) & ~detail).any())
    return plain, Alloc(plain.grid, plain.levels, plain.info, detail)


def test_detail_tokens_add_minus_the_reference_residual_over_sigma_on_their_cells_only(tiny):
    from cat.tokenizer import reference_detail

    x, t, text, image = image_inputs()
    plain, det = detail_pair(x)
    layout = build_layout(det)
    with torch.no_grad():
        out_plain = cat_forward(tiny.transformer, x, t, text, image, allocation=plain)
        out_det = cat_forward(tiny.transformer, x, t, text, image, allocation=layout)
        given = cat_forward(
            tiny.transformer, x, t, text, image, allocation=layout, reference=torch.zeros(1, 16, 1, 16, 16)
        )
        off_plain = cat_forward(tiny.transformer, x, t, text, image, allocation=plain, correct=False)
        off_det = cat_forward(tiny.transformer, x, t, text, image, allocation=layout, correct=False)
    ref = x[:, 20:36, :1]  # Wan2.1: the image latent's frame 0 in the condition channels
    expected = -reference_detail(ref, out_plain.shape, layout) / 0.7
    torch.testing.assert_close(out_det - out_plain, expected, atol=1e-5, rtol=1e-5)
    cells = layout.detail_cells.view(5, 8, 1, 8, 1).expand(5, 8, 2, 8, 2).reshape(5, 16, 16)
    assert torch.equal(out_det[:, :, ~cells], out_plain[:, :, ~cells])  # nothing on other cells, bit for bit
    assert (out_det - out_plain)[:, :, cells].abs().max() > 0.1
    assert torch.equal(given, out_plain)  # an explicit reference (here 0) replaces the one read off the input
    assert torch.equal(off_det, off_plain)  # correct=False (stage 2): detail flags change nothing


def test_detail_without_an_image_in_the_input_fails_in_one_line(tiny):
    x, t, text, image = inputs()  # random mask channels: no frame marked given
    x[:, 16:20] = 0.0
    _, det = detail_pair(x)
    with pytest.raises(ValueError, match="no reference latent was given") as info, torch.no_grad():
        cat_forward(tiny.transformer, x, t, text, image, allocation=det)
    assert "\n" not in str(info.value)


def test_stage2_loss_is_unchanged_by_detail_flags(tiny):
    """Prediction and target both without the correction (what the trainer computes): the same loss as
    both with it, detail term included (it is model-independent and cancels), in float64."""
    from cat import oracle_velocity

    model = copy.deepcopy(tiny.transformer).double()
    x, t, text, image = (v.double() for v in image_inputs(seed=4))
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(1, 16, 5, 16, 16, generator=g).double()
    sigma = torch.tensor([0.05], dtype=torch.float64)
    x[:, :16] = (1 - sigma) * x0 + sigma * torch.randn(1, 16, 5, 16, 16, generator=g).double()
    _, det = detail_pair(x)
    layout = build_layout(det)
    losses = []
    for correct in (True, False):
        with torch.no_grad():
            pred = cat_forward(model, x, sigma * 1000, text, image, allocation=layout, correct=correct)
        target = oracle_velocity(x[:, :16], x0, sigma, layout, correct=correct, reference=x[:, 20:36, :1])
        losses.append(float((pred.double() - target.double()).pow(2).mean()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert torch.equal(
        oracle_velocity(x[:, :16], x0, sigma, layout, correct=False),
        oracle_velocity(x[:, :16], x0, sigma, Allocation(det.grid, det.levels), correct=False),
    )
