"""`model.transformer_file`: an original-layout or ComfyUI-packaged Wan2.1 I2V transformer file loads
through diffusers' `from_single_file` (config from the folder, nothing from the hub) into exactly the
folder's transformer; files of other models stop with one line naming what was expected."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.config import ConfigError
from core.models import load_components, model_folder
from core.models.wan21.single_file import load_transformer_file, to_original_keys


def _write(path: Path, state: dict[str, torch.Tensor], prefix: str = "") -> Path:
    save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@torch.no_grad()
def _out(transformer) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return transformer(
        torch.randn(1, 36, 3, 8, 8, generator=g),
        torch.tensor([300.0]),
        torch.randn(1, 512, 32, generator=g),
        torch.randn(1, 65, 4, generator=g),
        return_dict=False,
    )[0]


@pytest.fixture(scope="module")
def original_state(tiny) -> dict[str, torch.Tensor]:
    return to_original_keys(tiny.transformer.state_dict())


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model.", "diffusion_model."])
def test_original_and_comfyui_files_load_exactly(tiny, tiny_cfg, original_state, tmp_path: Path, prefix: str) -> None:
    assert "head.modulation" in original_state and "blocks.0.self_attn.q.weight" in original_state
    assert "img_emb.proj.1.weight" in original_state and "blocks.0.cross_attn.k_img.weight" in original_state
    file = _write(tmp_path / "wan2.1_i2v.safetensors", original_state, prefix)
    if prefix == "model.diffusion_model.":  # the whole loader once (ComfyUI layout), the file loader for the others
        loaded = load_components(dataclasses.replace(tiny_cfg, transformer_file=str(file))).transformer
    else:
        loaded = load_transformer_file(file, model_folder(tiny_cfg), torch.float32)
    want, got = tiny.transformer.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert torch.equal(_out(loaded), _out(tiny.transformer))


def test_files_of_other_models_are_refused_in_one_line(tiny_cfg, original_state, tmp_path: Path) -> None:
    def error(state: dict[str, torch.Tensor], name: str) -> str:
        file = _write(tmp_path / name, state, "model.diffusion_model.")
        with pytest.raises(ConfigError) as info:
            load_components(dataclasses.replace(tiny_cfg, transformer_file=str(file)))
        message = str(info.value)
        assert "\n" not in message and "Wan2.1 I2V transformer" in message
        return message

    # an image model's file (e.g. a UNet): not a Wan transformer at all
    assert "lacks patch_embedding.weight" in error({"down_blocks.0.conv.weight": torch.zeros(4, 4)}, "unet.safetensors")
    # Wan text-to-video: no image branch, 16 input channels
    t2v = {k: v for k, v in original_state.items() if not k.startswith("img_emb.") and "_img" not in k}
    t2v["patch_embedding.weight"] = original_state["patch_embedding.weight"][:, :16].clone()
    assert "text-to-video" in error(t2v, "t2v.safetensors")
    # another size (here: a block missing) against the folder's config
    fewer = {k: v for k, v in original_state.items() if not k.startswith("blocks.1.")}
    assert "1 blocks" in error(fewer, "small.safetensors")

    missing = dataclasses.replace(tiny_cfg, transformer_file=str(tmp_path / "nope.safetensors"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_components(missing)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"not loaded")
    with pytest.raises(ConfigError, match="not a .safetensors file"):
        load_components(dataclasses.replace(tiny_cfg, transformer_file=str(pickle)))
