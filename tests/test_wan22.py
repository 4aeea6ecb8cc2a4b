"""Wan2.2 TI2V-5B through the family seam: the tiny preset's layout and geometry, conditioning equal
to diffusers' pipeline in its TI2V mode, and CAT's exactness on it."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch

import cat
from core.config import ConfigError
from core.models import family_of, get_family, load_components
from core.models.wan22 import SUBFOLDERS
from core.schema import ModelConfig


@pytest.fixture(scope="module")
def tiny22(tmp_path_factory: pytest.TempPathFactory):
    cfg = ModelConfig(family="wan2.2-ti2v", cache_dir=str(tmp_path_factory.mktemp("wan22-cache")), device="cpu")
    return load_components(cfg)


def test_tiny_preset_has_the_real_folder_layout_and_geometry(tiny22):
    folder = tiny22.folder
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline" and index["expand_timesteps"] is True
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(SUBFOLDERS)
    assert tiny22.image_encoder is None and tiny22.image_processor is None
    conf = tiny22.transformer.config
    assert (conf.in_channels, conf.out_channels, conf.added_kv_proj_dim, conf.image_dim) == (48, 48, None, None)
    vae = tiny22.vae.config
    assert (vae.z_dim, vae.patch_size, vae.scale_factor_spatial, vae.is_residual) == (48, 2, 16, True)
    family = tiny22.family
    assert family_of(tiny22.transformer) is family is get_family("wan2.2-ti2v")
    geometry = family.geometry
    assert (geometry.cell_px, geometry.noisy_channels, geometry.condition_channels) == (32, 48, 0)
    from core.models.wan22 import REAL_TRANSFORMER

    real = REAL_TRANSFORMER["num_attention_heads"] * REAL_TRANSFORMER["attention_head_dim"]
    assert family.cost_dims == {"dim": real, "ffn_dim": REAL_TRANSFORMER["ffn_dim"], "context_tokens": 512}
    video = torch.rand(1, 3, 9, 64, 96) * 2 - 1
    latents = family.encode_video(tiny22, video)
    assert latents.shape == (1, 48, 3, 4, 6)
    assert geometry.patch_grid(9, 64, 96) == (3, 2, 3)
    condition = family.encode_condition(tiny22, video[:, :, 0], 9)
    assert condition.shape == (1, 48, 1, 4, 6)
    assert family.encode_image(tiny22, None) is None


def test_folder_errors_name_what_is_wrong(tiny22, tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny22.folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError, match="lacks vae"):
        load_components(ModelConfig(family="wan2.2-ti2v", path=str(broken), device="cpu"))
    with pytest.raises(ConfigError, match="in/out channels 36/16 and an image branch"):  # a Wan2.1 folder
        load_components(ModelConfig(family="wan2.2-ti2v", path=str(tiny.folder), device="cpu"))
    with pytest.raises(ConfigError, match="transformer_file is read for model.family=wan2.1-i2v only"):
        load_components(ModelConfig(family="wan2.2-ti2v", path=str(tiny22.folder), transformer_file="x.safetensors"))


def test_conditioning_pieces_reproduce_the_ti2v_pipeline(tiny22):
    """The family's model_input / timestep_input / apply_condition in a plain loop give, bit for
    bit, the latents of `WanImageToVideoPipeline(expand_timesteps=True)`."""
    from PIL import Image

    family, steps, shape = tiny22.family, 3, (1, 48, 3, 4, 4)
    pipe = family.pipeline(tiny22)
    pixels = (torch.arange(64 * 64 * 3) % 251).reshape(64, 64, 3).to(torch.uint8).numpy()
    image = Image.fromarray(pixels)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    expected = pipe(
        image=image,
        prompt="a cinematic shot",
        height=64,
        width=64,
        num_frames=9,
        num_inference_steps=steps,
        guidance_scale=1.0,
        latents=noise.clone(),
        output_type="latent",
    ).frames
    first = pipe.video_processor.preprocess(image, height=64, width=64).float()
    condition = family.encode_condition(tiny22, first, 9)
    text = family.encode_prompt(tiny22, ["a cinematic shot"])
    scheduler = copy.deepcopy(tiny22.scheduler)
    scheduler.set_timesteps(steps)
    latents = noise.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = family.model_input(latents, condition)
            timestep = family.timestep_input(t.expand(1), condition, latents)
            velocity = tiny22.transformer(x, timestep, text, return_dict=False)[0]
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    assert timestep.shape == (1, 3 * 2 * 2) and timestep[0, :4].eq(0).all() and timestep[0, 4:].gt(0).all()
    latents = family.apply_condition(latents, condition)
    assert torch.equal(latents, expected)
    assert torch.equal(latents[:, :, :1], condition)  # the image is the clean first latent frame


def _cat_inputs(tiny22):
    family = tiny22.family
    gen = torch.Generator().manual_seed(0)
    noisy = torch.randn(1, 48, 3, 8, 8, generator=gen)
    condition = torch.randn(1, 48, 1, 8, 8, generator=gen)
    x = family.model_input(noisy, condition)
    t = family.timestep_input(torch.tensor([700.0]), condition, noisy)
    text = torch.randn(1, 512, 32, generator=gen)
    return x, t, text


def test_cat_forward_exact_at_full_budget(tiny22):
    """rho = 1 and allocation None are Wan2.2's own forward bit for bit (per-token timesteps)."""
    model = tiny22.transformer
    x, t, text = _cat_inputs(tiny22)
    grid = tiny22.family.geometry.patch_grid(9, 128, 128)
    assert grid == (3, 4, 4)
    with torch.no_grad():
        stock = model(x, t, text, return_dict=False)[0]
        full = cat.allocate(x, grid, rho=1.0)
        assert full.num_tokens == 48
        for allocation in (None, full):
            out = cat.cat_forward(model, x, t, text, allocation=allocation)
            assert torch.equal(out, stock)
        half = cat.allocate(x, grid, rho=0.5)
        mixed = cat.cat_forward(model, x, t, text, allocation=half)
    assert half.num_tokens < 48 and mixed.shape == stock.shape and torch.isfinite(mixed).all()
    assert not torch.equal(mixed, stock)  # guards the equality above: fewer tokens change the output


def test_sampler_uniform_equals_the_pipeline_and_cat_runs(tiny22):
    """The project's sampler on Wan2.2: uniform tokens give the TI2V pipeline's latents; CAT at
    zero thresholds is the uniform run bit for bit; CAT at rho 0.5 spends fewer tokens."""
    import numpy as np

    from cat.policy import CatPolicy, UniformPolicy
    from core.media import synthetic_frame
    from infer.sampler import denoise, prepare_conditioning

    h = w = 128
    geometry = tiny22.family.geometry
    grid = geometry.patch_grid(9, h, w)
    frame = torch.from_numpy(np.array(synthetic_frame(h, w))).permute(2, 0, 1)[None].float() / 127.5 - 1
    cond = prepare_conditioning(tiny22, frame, "a cinematic shot", 9)
    assert cond.image_embeds is None
    uniform = denoise(tiny22, cond, UniformPolicy(), steps=3, seed=7)
    ref = tiny22.pipeline()(
        image=synthetic_frame(h, w),
        prompt="a cinematic shot",
        height=h,
        width=w,
        num_frames=9,
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).frames
    torch.testing.assert_close(uniform.latents, ref, atol=1e-6, rtol=1e-6)
    zero = CatPolicy(thresholds=(0.0, 0.0), latent_thresholds=(0.0, 0.0), warmup_steps=1)
    same = denoise(tiny22, cond, zero, steps=3, seed=7)  # the sampler binds it with the family's geometry
    assert torch.equal(same.latents, uniform.latents)
    half = denoise(
        tiny22,
        cond,
        CatPolicy(rho=0.5, warmup_steps=1),
        steps=3,
        seed=7,
    )
    assert max(half.tokens_per_step[1:]) < grid[0] * grid[1] * grid[2] and torch.isfinite(half.latents).all()
    assert torch.equal(half.latents[:, :, :1], cond.condition)  # the image stays the first latent frame


def test_generate_config_runs_on_the_tiny_preset(tiny22, tmp_path):
    """`python -m infer.generate --config configs/generate_wan22.yaml output_dir=DIR`, in process."""
    import imageio.v3 as iio

    from infer.generate import main

    out = tmp_path / "gen"
    main(["--config", "configs/generate_wan22.yaml", f"model.cache_dir={tiny22.folder.parent}", f"output_dir={out}"])
    info = json.loads((out / "generate.json").read_text())
    assert info["model_id"] == "wan22-tiny-seed0" and info["frames"] == 9
    assert iio.imread(out / "video.mp4", plugin="pyav").shape == (9, 64, 64, 3)
    with pytest.raises(ConfigError, match="height=48 must be a positive multiple of 32"):
        main(["--config", "configs/generate_wan22.yaml", "height=48", f"output_dir={out}"])


def test_cat_forward_reads_the_reference_from_frame_0(tiny22):
    """Reference detail on Wan2.2: the reference is the clean first latent frame of the input; detail
    cells get -R(ref) / sigma at their token's sigma (0 on frame 0's clean tokens: nothing there)."""
    from cat.tokenizer import build_layout, inverse_sigma, reference_detail, sigma_per_cell

    model = tiny22.transformer
    x, t, text = _cat_inputs(tiny22)
    grid = (3, 4, 4)
    levels = torch.ones(3, 2, 2, dtype=torch.int8)
    detail = torch.zeros(3, 2, 2, dtype=torch.bool)
    detail[:, 0] = True  # the top block row, every frame
    plain, det = cat.Allocation(grid, levels), cat.Allocation(grid, levels, detail=detail)
    layout = build_layout(det)
    with torch.no_grad():
        out_plain = cat.cat_forward(model, x, t, text, allocation=plain)
        out_det = cat.cat_forward(model, x, t, text, allocation=layout)
    ref = x[:, :, :1]
    assert torch.equal(tiny22.family.reference_latent(x), ref)
    sigma = sigma_per_cell(t.float() / 1000, layout, 1)
    expected = -reference_detail(ref, out_plain.shape, layout) * inverse_sigma(sigma)
    torch.testing.assert_close(out_det - out_plain, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(out_det[:, :, 0], out_plain[:, :, 0])  # frame 0 is clean: no correction
    assert torch.equal(out_det[:, :, :, 4:], out_plain[:, :, :, 4:])  # no detail on the bottom row
    assert (out_det - out_plain)[:, :, 1:].abs().max() > 0.1
    one_frame = x[:, :, :1]
    assert tiny22.family.reference_latent(one_frame) is None  # one frame: no image, detail refused
    with pytest.raises(ValueError, match="no reference latent was given"), torch.no_grad():
        one = cat.Allocation((1, 4, 4), levels[:1], detail=detail[:1])
        cat.cat_forward(model, one_frame, torch.full((1, 16), 700.0), text, allocation=one)
