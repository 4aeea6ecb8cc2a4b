"""Generation runs the project's one sampler: a playable mp4 of the requested shape, the diffusers
pipeline's output with uniform tokens, and with `cat.*` exactly the A/B's CAT arm, fewer tokens
per step recorded in generate.json next to an allocation overlay."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
import torch

from core.config import ConfigError, load_config
from core.schema import ABConfig, CatInferConfig, GenerateConfig
from infer.generate import build_components, generate, load_image, render

H, W, T = 64, 64, 9


def test_generate_writes_video_of_expected_shape(tiny_cfg, tmp_path):
    cfg = GenerateConfig(model=tiny_cfg, height=48, width=80, num_frames=13, steps=2, output_dir=str(tmp_path))
    info = generate(cfg, progress=False)
    frames = iio.imread(tmp_path / "video.mp4", plugin="pyav")
    assert frames.shape == (13, 48, 80, 3)
    assert (tmp_path / "contact_sheet.png").stat().st_size > 0
    data = json.loads((tmp_path / "generate.json").read_text())
    assert data["frames"] == 13 == info["frames"]
    assert data["tokenization"] == "uniform" and data["tokens"] == [data["uniform_tokens"]] * 2 == [4 * 3 * 5] * 2
    assert data["overlay"] is None and not (tmp_path / "overlay.png").exists()


def test_uniform_generation_is_the_diffusers_pipeline(tiny, tiny_cfg):
    cfg = GenerateConfig(model=tiny_cfg, height=H, width=W, num_frames=T, steps=3, seed=5)
    image = load_image(None, H, W)
    ours = render(cfg, tiny, image).result.latents
    ref = tiny.pipeline()(
        image=image,
        prompt=cfg.prompt,
        height=H,
        width=W,
        num_frames=T,
        num_inference_steps=3,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(5),
        output_type="latent",
    ).frames
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)


def test_cat_generation_equals_the_ab_cat_arm(tiny_cfg, tmp_path):
    """Same seed and settings (UniPC, CFG, rho 0.5): generate's latents and frames are the A/B's, bit for bit."""
    from infer.ab import build_components as ab_components
    from infer.ab import run_arms
    from infer.arms import ab_arms
    from infer.parallel import ParallelContext
    from infer.sampler import frame_tensor, prepare_conditioning

    settings = CatInferConfig(rho=0.5, warmup_steps=1, refresh_every=1)
    common = dict(
        model=tiny_cfg,
        height=H,
        width=W,
        num_frames=T,
        steps=3,
        guidance_scale=2.0,
        scheduler="unipc",
        negative_prompt="blurry",
        cat=settings,
    )
    cfg = GenerateConfig(seed=11, output_dir=str(tmp_path), **common)
    image = load_image(None, H, W)
    gen = render(cfg, build_components(cfg, []), image)

    ab_cfg = ABConfig(seeds=[11], **common)
    comp = ab_components(ab_cfg)
    cond = prepare_conditioning(comp, frame_tensor(image), ab_cfg.prompt, T, ab_cfg.negative_prompt, 2.0)
    cat_arm = [arm for arm in ab_arms(ab_cfg.cat) if arm.name == "cat"]
    numbers, video, result = run_arms(comp, cond, cat_arm, ab_cfg, 11, ParallelContext())["cat"]
    assert torch.equal(gen.result.latents, result.latents)
    assert torch.equal(gen.video, video)
    assert gen.result.tokens_per_step == numbers.tokens_per_step
    assert max(numbers.tokens_per_step) < gen.uniform_tokens == 3 * 4 * 4

    info = generate(cfg, progress=False)  # the files of that same run
    data = json.loads((tmp_path / "generate.json").read_text())
    assert data["tokens"] == info["tokens"] == gen.result.tokens_per_step
    assert data["tokenization"] == "cat" and data["settings"]["cat"]["rho"] == 0.5 and data["s_per_step"] > 0
    assert (tmp_path / "overlay.png").stat().st_size > 0 and data["overlay"].endswith("overlay.png")


def test_cat_keys_switch_cat_on_and_bad_ones_are_refused():
    assert load_config(GenerateConfig, "configs/generate.yaml").cat is None  # off by default
    assert load_config(GenerateConfig, "configs/generate.yaml", ["cat.rho=0.5"]).cat.rho == 0.5
    with pytest.raises(ConfigError, match="cat.source=reference needs a reference clip"):
        load_config(GenerateConfig, None, ["cat.source=reference"])
    with pytest.raises(ConfigError, match="drop model.cpu_offload or the cat"):
        load_config(GenerateConfig, None, ["cat.rho=0.5", "model.cpu_offload=true"])
    with pytest.raises(ConfigError, match="scheduler='ddim' is not one of"):
        load_config(GenerateConfig, None, ["scheduler=ddim"])
    with pytest.raises(ConfigError, match=r"cat.rho=1.5 must be in \(0, 1\]"):
        load_config(GenerateConfig, None, ["cat.rho=1.5"])
