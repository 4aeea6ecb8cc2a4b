"""The model-family seam: `model.family` resolves (or fails in one line), geometry is data that
`cat/` follows, and the forward finds its family from the transformer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cat.complexity import region_complexity
from core.config import ConfigError, load_config
from core.models import Geometry, family_of, get_family
from core.schema import GenerateConfig


def test_default_family_is_wan21_i2v_with_its_geometry():
    family = get_family()
    g = family.geometry
    assert family.name == "wan2.1-i2v" and g.cell_px == 16 and g.in_channels == 36
    assert g.latent_frames(33) == 9 and g.pixel_frames(9) == 33
    assert g.patch_grid(33, 480, 832) == (9, 30, 52) and g.pixel_shape((9, 30, 52)) == (33, 480, 832)
    assert list(g.frames_of_latent(0)) == [0] and list(g.frames_of_latent(2)) == [5, 6, 7, 8]
    assert family.lora_targets["cross_attn"] == ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
    assert family.original_keys["attn2.add_k_proj"] == "cross_attn.k_img"


def test_an_unknown_family_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"model.family 'wan9' is unknown; choose one of wan2.1-i2v"):
        load_config(GenerateConfig, None, ["model.family=wan9"])
    result = subprocess.run(
        [sys.executable, "-m", "infer.generate", "model.family=wan9", f"output_dir={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "model.family 'wan9' is unknown" in result.stderr


def test_complexity_follows_the_geometry_it_is_given():
    """A 32-px-cell family (VAE 16x, like Wan2.2 TI2V-5B) reads a 64x64 clip as a 2x2 grid; the
    default geometry would read it as 4x4 and rejects the 2x2 grid in one line."""
    coarse = Geometry(vae_t=4, vae_s=16, patch=(1, 2, 2), noisy_channels=48, condition_channels=0, text_tokens=512)
    video = torch.rand(1, 3, 5, 64, 64) * 2 - 1
    maps = region_complexity(video, coarse.patch_grid(5, 64, 64), geometry=coarse)
    assert maps.grid == (2, 2, 2)
    with pytest.raises(ValueError, match=r"expected 5 frames at 32x32 \(T = 1 \+ 4\(F'-1\), H = 16 H'"):
        region_complexity(video, (2, 2, 2))


def test_the_forward_finds_the_family_from_the_transformer():
    from diffusers import WanTransformer3DModel

    from core.models.wan21 import TINY_TRANSFORMER

    assert family_of(WanTransformer3DModel(**TINY_TRANSFORMER)).name == "wan2.1-i2v"
    assert family_of(WanTransformer3DModel(**{**TINY_TRANSFORMER, "in_channels": 48, "out_channels": 48})).name == (
        "wan2.2-ti2v"
    )
    other = WanTransformer3DModel(**{**TINY_TRANSFORMER, "in_channels": 64, "out_channels": 64})
    with pytest.raises(ValueError, match=r"no model family recognises WanTransformer3DModel \(in_channels=64"):
        family_of(other)


def test_lora_target_checks_take_the_familys_key_map():
    """A target is exportable only under the configured family's original-key map (Wan2.2's has no
    image branch), not the default family's."""
    from core.lora_check import check_targets

    layout = {"blocks.0.attn2.to_q": (8, 8), "blocks.0.attn2.add_k_proj": (8, 8)}
    check_targets(["attn2.to_q", "attn2.add_k_proj"], layout, get_family("wan2.1-i2v").original_keys)
    with pytest.raises(
        ConfigError, match="'attn2.add_k_proj' matches blocks.0.attn2.add_k_proj, which has no original"
    ):
        check_targets(["attn2.add_k_proj"], layout, get_family("wan2.2-ti2v").original_keys)


def test_full_size_transformer_configs_agree_with_the_familys_numbers():
    """The benchmarks' full-size configs live in the family folders and match its geometry and cost dims."""
    from core.models import wan21, wan22

    for family, config in (
        (get_family("wan2.1-i2v"), wan21.REAL_TRANSFORMER),
        (get_family("wan2.2-ti2v"), wan22.REAL_TRANSFORMER),
    ):
        dims, g = family.cost_dims, family.geometry
        assert config["num_attention_heads"] * config["attention_head_dim"] == dims["dim"]
        assert config["ffn_dim"] == dims["ffn_dim"] and tuple(config["patch_size"]) == g.patch
        assert (config["in_channels"], config["out_channels"]) == (g.in_channels, g.noisy_channels)


def test_frame_and_size_rules_come_from_the_familys_geometry(monkeypatch):
    """4k+1 frames and 16-px sizes are Wan2.1's numbers, not constants: a family whose VAE packs 8
    frames per latent frame (patched here) takes 8k+1, and Wan2.2's 32-px cells refuse 48."""
    import dataclasses

    wan22 = get_family("wan2.2-ti2v")
    monkeypatch.setattr(wan22, "geometry", dataclasses.replace(wan22.geometry, vae_t=8))
    family = ["model.family=wan2.2-ti2v", "height=64", "width=64"]
    assert load_config(GenerateConfig, None, [*family, "num_frames=17"]).num_frames == 17
    with pytest.raises(ConfigError, match=r"num_frames=13 is not of the form 8k\+1 \(the model.s VAE\); use 9 or 17"):
        load_config(GenerateConfig, None, [*family, "num_frames=13"])
    with pytest.raises(ConfigError, match="width=48 must be a positive multiple of 32; use 32 or 64"):
        load_config(GenerateConfig, None, [*family, "num_frames=17", "width=48"])
    assert load_config(GenerateConfig, None, ["num_frames=9", "width=48"]).width == 48  # Wan2.1: 16-px cells


def test_stage_presets_resolve_through_the_given_family():
    from core.schema import LoraSpec
    from train.lora import stage_targets

    wan21, wan22 = get_family("wan2.1-i2v"), get_family("wan2.2-ti2v")
    cross = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    assert stage_targets(LoraSpec(image_branch=True), ("cross_attn",), wan21) == [
        *cross,
        "attn2.add_k_proj",
        "attn2.add_v_proj",
    ]
    assert stage_targets(LoraSpec(), ("self_attn", "ffn"), wan22)[-2:] == ["ffn.net.0.proj", "ffn.net.2"]
    with pytest.raises(ConfigError, match="model.family wan2.2-ti2v has no image branch"):
        stage_targets(LoraSpec(image_branch=True), ("cross_attn",), wan22)
    with pytest.raises(ConfigError, match="has no LoRA target preset 'image_branch'"):
        stage_targets(LoraSpec(), ("image_branch",), wan22)
