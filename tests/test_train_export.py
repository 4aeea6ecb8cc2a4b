"""Exports: the diffusers file reloads through `load_lora_weights` with identical outputs (alpha
kept), the ComfyUI file uses original Wan key names, and both stages' files stack at inference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.models.wan21 import CROSS_ATTN_TARGETS, FFN_TARGETS, SELF_ATTN_TARGETS, load_components
from core.schema import LoraSpec
from train import export
from train.checkpoint import ADAPTER_DIR, STATE_FILE
from train.lora import (
    adapter_state_dict,
    add_trainable_adapter,
    load_base_lora,
    peft_metadata,
    read_metadata,
    write_lora_file,
)

pytest_plugins = ("tests.train_fixtures",)  # fixtures: one_thread
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"hidden_states": torch.randn(1, 36, 3, 8, 8, generator=g), "timestep": torch.tensor([420.0]),
            "encoder_hidden_states": torch.randn(1, 512, 32, generator=g),
            "encoder_hidden_states_image": torch.randn(1, 65, 4, generator=g)}


@torch.no_grad()
def _out(transformer) -> torch.Tensor:
    return transformer(**_inputs(), return_dict=False)[0]


def _checkpoint(root: Path, transformer, spec: LoraSpec, stage: str) -> Path:
    """A checkpoint folder as the trainer writes it (adapter in export format + trainer state)."""
    ckpt = root / "checkpoints" / "checkpoint-000010"
    write_lora_file(ckpt / ADAPTER_DIR / f"{spec.name}.safetensors", adapter_state_dict(transformer, spec.name),
                    peft_metadata(transformer, spec.name),
                    {"cinelora.stage": stage, "cinelora.rank": str(spec.rank), "cinelora.alpha": str(spec.alpha)})
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 10}))
    return ckpt


def _adapter(transformer, spec: LoraSpec, targets: tuple[str, ...], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for param in add_trainable_adapter(transformer, spec, list(targets)):
        param.data = torch.randn(param.shape, generator=g) * 0.2


def test_export_round_trips_through_diffusers_and_stacks(tiny_cfg, tmp_path: Path, capsys) -> None:
    trained = load_components(tiny_cfg).transformer
    base = _out(trained)
    style = LoraSpec(name="style", rank=4, alpha=3.0, image_branch=True)  # alpha != rank: must survive export
    _adapter(trained, style, CROSS_ATTN_TARGETS + ("attn2.add_k_proj", "attn2.add_v_proj"), seed=1)
    want_style = _out(trained)
    assert (want_style - base).abs().max() > 1e-2

    run1 = tmp_path / "stage1"
    ckpt1 = _checkpoint(run1, trained, style, "style")
    assert export.main([str(run1), "--format", "both"]) == 0  # a run folder: its latest checkpoint
    printed = capsys.readouterr().out
    diffusers_file, comfy_file = run1 / "lora" / "style.safetensors", run1 / "lora" / "style_comfyui.safetensors"
    assert str(diffusers_file) in printed and str(comfy_file) in printed
    meta = read_metadata(diffusers_file)
    assert meta["cinelora.stage"] == "style" and meta["cinelora.alpha"] == "3.0"
    assert meta["cinelora.checkpoint"] == ckpt1.name and json.loads(meta["lora_adapter_metadata"])["transformer.lora_alpha"] == 3.0

    # diffusers format: a fresh pipeline reproduces the trained adapter exactly
    pipe = load_components(tiny_cfg).pipeline()
    pipe.load_lora_weights(str(diffusers_file.parent), weight_name=diffusers_file.name, adapter_name="style")
    assert torch.equal(_out(pipe.transformer), want_style)

    # ComfyUI format: original Wan names, one alpha per layer, no peft adapter names
    comfy = load_file(str(comfy_file))
    assert all(k.startswith("diffusion_model.blocks.") for k in comfy)
    assert not any(".default." in k or "transformer." in k or "attn2" in k for k in comfy)
    for layer in ("cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img"):
        assert f"diffusion_model.blocks.1.{layer}.lora_A.weight" in comfy
        assert f"diffusion_model.blocks.1.{layer}.lora_B.weight" in comfy
        assert comfy[f"diffusion_model.blocks.1.{layer}.alpha"].item() == 3.0
    assert read_metadata(comfy_file)["cinelora.format"] == "comfyui"
    pipe = load_components(tiny_cfg).pipeline()
    pipe.load_lora_weights(str(comfy_file.parent), weight_name=comfy_file.name, adapter_name="style")
    # diffusers folds alpha / rank into the weights on conversion: equal up to float rounding
    torch.testing.assert_close(_out(pipe.transformer), want_style, rtol=1e-5, atol=1e-5)

    # stage 2's starting point: the style file frozen as an adapter, or fused into the base weights
    for mode in ("frozen", "merged"):
        fresh = load_components(tiny_cfg).transformer
        load_base_lora(fresh, diffusers_file, "base", mode)
        assert not any(p.requires_grad for p in fresh.parameters())
        assert (getattr(fresh, "peft_config", None) is None) == (mode == "merged")
        torch.testing.assert_close(_out(fresh), want_style, rtol=1e-5, atol=1e-5)

    # stage 2's motion LoRA on top: both files load together, each with its own weight
    motion = LoraSpec(name="motion", rank=2, alpha=4.0)
    _adapter(trained, motion, SELF_ATTN_TARGETS + FFN_TARGETS, seed=2)
    trained.set_adapters(["style", "motion"], [1.0, 0.5])
    want_both = _out(trained)
    run2 = tmp_path / "stage2"
    _checkpoint(run2, trained, motion, "motion")
    files = export.export_checkpoint(run2, run2 / "lora", "diffusers")
    pipe = load_components(tiny_cfg).pipeline()
    pipe.load_lora_weights(str(diffusers_file.parent), weight_name=diffusers_file.name, adapter_name="style")
    pipe.load_lora_weights(str(files["diffusers"].parent), weight_name=files["diffusers"].name, adapter_name="motion")
    pipe.set_adapters(["style", "motion"], [1.0, 0.5])
    assert torch.equal(_out(pipe.transformer), want_both)
    pipe.set_adapters(["style", "motion"], [1.0, 0.0])
    assert torch.equal(_out(pipe.transformer), want_style)


def test_export_rejects_a_folder_without_checkpoints(tmp_path: Path, capsys) -> None:
    from core.config import run_cli

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: export.main([str(tmp_path)]))
    assert exit_info.value.code == 2 and "checkpoint" in capsys.readouterr().err


def test_bf16_export_is_half_size_and_close_to_fp32(tiny_cfg, tmp_path: Path) -> None:
    trained = load_components(tiny_cfg).transformer
    base = _out(trained)
    spec = LoraSpec(name="style", rank=8, alpha=8.0)
    _adapter(trained, spec, CROSS_ATTN_TARGETS + SELF_ATTN_TARGETS, seed=3)
    run = tmp_path / "run"
    _checkpoint(run, trained, spec, "style")
    outputs, sizes, tensor_bytes = {}, {}, {}
    for dtype in ("fp32", "bf16"):
        files = export.export_checkpoint(run, tmp_path / dtype, "both", dtype=dtype)
        state = load_file(str(files["diffusers"]))
        assert {v.dtype for v in state.values()} == {torch.float32 if dtype == "fp32" else torch.bfloat16}
        assert read_metadata(files["diffusers"])["cinelora.dtype"] == dtype
        comfy = load_file(str(files["comfyui"]))
        assert all(v.dtype == torch.float32 for k, v in comfy.items() if k.endswith(".alpha"))
        sizes[dtype] = files["diffusers"].stat().st_size
        tensor_bytes[dtype] = sum(v.numel() * v.element_size() for v in state.values())
        pipe = load_components(tiny_cfg).pipeline()
        pipe.load_lora_weights(str(files["diffusers"].parent), weight_name=files["diffusers"].name, adapter_name="s")
        outputs[dtype] = _out(pipe.transformer)
    assert tensor_bytes["bf16"] * 2 == tensor_bytes["fp32"]
    # the tiny file's JSON header and metadata do not halve: measured 0.59 of the fp32 file (a 14B rank-32 LoRA: ~0.5)
    assert sizes["bf16"] < 0.65 * sizes["fp32"], sizes
    effect = (outputs["fp32"] - base).norm()
    rel = float((outputs["bf16"] - outputs["fp32"]).norm() / effect)
    # relative to what the LoRA changes in the output; measured 0.0027 (tiny, random LoRA; max abs 0.0027); docs/train.md states it
    assert 0 < rel < 0.01, rel


def test_export_dtype_is_checked(tmp_path: Path) -> None:
    from core.config import ConfigError, load_config
    from core.schema import TrainConfig

    with pytest.raises(ConfigError, match="export.dtype"):
        load_config(TrainConfig, "configs/stage1_style.yaml", ["export.dtype=fp8"])


def test_export_uses_the_trained_familys_key_map(tmp_path: Path) -> None:
    """The ComfyUI names come from the family recorded in the checkpoint (`cinelora.family`): Wan2.2's
    map has no image branch, so an image-branch key is refused there and mapped for Wan2.1 (and for
    files from before the family was recorded, which were all Wan2.1)."""
    state = {
        f"transformer.blocks.0.{layer}.lora_{part}.weight": torch.ones(2, 2)
        for layer in ("attn2.to_q", "attn2.add_k_proj")
        for part in "AB"
    }
    peft_config = {"transformer.r": 2, "transformer.lora_alpha": 2}
    for family, refused in (("wan2.1-i2v", False), ("", False), ("wan2.2-ti2v", True)):
        ckpt = tmp_path / (family or "unrecorded") / "checkpoints" / "checkpoint-000001"
        write_lora_file(ckpt / ADAPTER_DIR / "style.safetensors", state, peft_config, {"cinelora.family": family})
        (ckpt / STATE_FILE).write_text(json.dumps({"step": 1}))
        if refused:
            with pytest.raises(ValueError, match="no original Wan name for LoRA key .*add_k_proj"):
                export.export_checkpoint(ckpt, tmp_path / "out-refused", "comfyui")
            continue
        files = export.export_checkpoint(ckpt, tmp_path / f"out-{family}", "comfyui")
        assert "diffusion_model.blocks.0.cross_attn.k_img.lora_A.weight" in load_file(str(files["comfyui"]))
