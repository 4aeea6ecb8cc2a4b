"""The Wan adapter: tiny preset round trip through the from-folder path, folder checks, context rule."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError
from core.models.wan21 import TEXT_TOKENS, load_components, patch_grid, tiny_modules
from core.schema import ModelConfig


def test_tiny_preset_reloads_from_folder_with_identical_output(tiny, tiny_cfg):
    fresh = tiny_modules(tiny_cfg.seed)["transformer"].eval()
    torch.manual_seed(1)
    x = torch.randn(1, 36, 3, 8, 8)
    t = torch.tensor([500.0])
    txt = torch.randn(1, TEXT_TOKENS, 32)
    img = torch.randn(1, 65, 4)
    with torch.no_grad():
        a = fresh(x, t, txt, encoder_hidden_states_image=img, return_dict=False)[0]
        b = tiny.transformer(x, t, txt, encoder_hidden_states_image=img, return_dict=False)[0]
    assert a.shape == (1, 16, 3, 8, 8)
    assert (a - b).abs().max().item() <= 1e-5  # identical weights; kernels may differ in the last bit
    loaded = tiny.transformer.state_dict()
    assert all(torch.equal(v, loaded[k]) for k, v in fresh.state_dict().items())
    assert (tiny.folder / "model_index.json").is_file()
    assert tiny.transformer.config.added_kv_proj_dim is not None  # real I2V image branch


def test_missing_subfolders_are_listed(tmp_path):
    (tmp_path / "transformer").mkdir()
    with pytest.raises(ConfigError, match=r"lacks model_index.json, vae, text_encoder, tokenizer, image_encoder"):
        load_components(ModelConfig(path=str(tmp_path)))


def test_patch_grid_matches_vae_and_patch_sizes():
    assert patch_grid(33, 480, 832) == (9, 30, 52)
    assert patch_grid(81, 720, 1280) == (21, 45, 80)
