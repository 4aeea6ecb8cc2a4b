"""LoRA stacks at inference: a LoRA changes the output of both A/B arms, and its weight scales the change."""

from __future__ import annotations

import json

import pytest
import torch

from core.models import load_components
from core.schema import LoraFile
from infer.adapters import apply_loras
from tests.infer_sp_inputs import mixed_allocation


def _lora_file(tiny_cfg, folder, targets, seed):
    """A LoRA saved the way stack-facts.md says reloads exactly (peft config in the file's metadata)."""
    from diffusers import WanImageToVideoPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    comp = load_components(tiny_cfg)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets))
    comp.transformer.add_adapter(config)
    g = torch.Generator().manual_seed(seed)
    for name, param in comp.transformer.named_parameters():
        if "lora_B" in name:  # B starts at zero (no effect); a small random B gives a small, linear change
            param.data = 0.02 * torch.randn(param.shape, generator=g)
    WanImageToVideoPipeline.save_lora_weights(
        str(folder), transformer_lora_layers=get_peft_model_state_dict(comp.transformer),
        transformer_lora_adapter_metadata=config.to_dict(),
    )
    return folder / "pytorch_lora_weights.safetensors"


def _inputs():
    g = torch.Generator().manual_seed(2)
    return dict(hidden_states=torch.randn(1, 36, 3, 8, 10, generator=g), timestep=torch.tensor([600]),
                encoder_hidden_states=torch.randn(1, 512, 32, generator=g),
                encoder_hidden_states_image=torch.randn(1, 65, 4, generator=g))


def _outputs(tiny_cfg, loras):
    """(uniform arm, CAT arm) outputs of a fresh model with `loras` applied."""
    from cat import cat_forward

    comp = load_components(tiny_cfg)
    apply_loras(comp.pipeline(), loras)
    with torch.no_grad():
        uniform = comp.transformer(**_inputs(), return_dict=False)[0]
        mixed = cat_forward(comp.transformer, **_inputs(), allocation=mixed_allocation())
    return uniform, mixed


def test_lora_stack_changes_both_arms_and_weight_scales_the_change(tiny_cfg, tmp_path):
    style = _lora_file(tiny_cfg, tmp_path / "style", ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"], 1)
    motion = _lora_file(tiny_cfg, tmp_path / "motion", ["attn1.to_q", "attn1.to_v", "ffn.net.2"], 2)
    base = _outputs(tiny_cfg, [])
    full = _outputs(tiny_cfg, [LoraFile(str(style), 1.0)])
    half = _outputs(tiny_cfg, [LoraFile(str(style), 0.5)])
    stack = _outputs(tiny_cfg, [LoraFile(str(style), 1.0), LoraFile(str(motion), 1.0)])
    for arm in (0, 1):  # 0: uniform (stock forward), 1: CAT (mixed tokens)
        d_full = (full[arm] - base[arm]).abs().mean().item()
        d_half = (half[arm] - base[arm]).abs().mean().item()
        assert d_full > 1e-3, "the LoRA did not change the output"
        assert abs(d_half / d_full - 0.5) < 0.1, f"weight 0.5 gave {d_half / d_full:.3f} of the weight-1 change"
        assert (stack[arm] - full[arm]).abs().mean().item() > 1e-3, "the second LoRA of the stack had no effect"


# ---------------------------------------------------------------- bad LoRA files: one line before the model loads
def _edited(src, dst, edit):
    """A copy of the LoRA file `src` with its tensors/metadata changed by `edit(state, metadata)`."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    with safe_open(str(src), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    edit(state, metadata)
    save_file(state, str(dst), metadata=metadata)
    return dst


def _rank_metadata(state, metadata):
    config = json.loads(metadata["lora_adapter_metadata"])
    config["transformer.r"] = 8
    metadata["lora_adapter_metadata"] = json.dumps(config)


BAD_FILES = {
    "pickle": (lambda src, dst: (dst.with_suffix(".pt").write_bytes(b"x"), dst.with_suffix(".pt"))[1],
               "is not a .safetensors file; only safetensors"),
    "random keys": (lambda src, dst: _edited(src, dst, lambda s, m: s.update({"foo.bar": torch.zeros(2)})),
                    "holds 'foo.bar', which is not a LoRA weight of a Wan transformer block"),
    "wrong in dim": (lambda src, dst: _edited(src, dst, lambda s, m: s.update(
        {k: torch.zeros(v.shape[0], v.shape[1] + 1) for k, v in s.items() if "attn2.to_q.lora_A" in k})),
        "has LoRA shapes A [4, 25]"),
    "wrong out dim": (lambda src, dst: _edited(src, dst, lambda s, m: s.update(
        {k: torch.zeros(v.shape[0] * 2, v.shape[1]) for k, v in s.items() if "attn2.to_q.lora_B" in k})),
        "this model needs A [r, 24] and B [24, r]"),
    "rank vs metadata": (lambda src, dst: _edited(src, dst, _rank_metadata),
                         "metadata (lora_adapter_metadata r) says rank 8 but the weights have rank 4"),
    "no such block": (lambda src, dst: _edited(src, dst, lambda s, m: s.update(
        {k.replace("blocks.0.", "blocks.7."): v.clone() for k, v in list(s.items())})),
        "which this model does not have (2 blocks)"),
}


@pytest.mark.parametrize("bad", list(BAD_FILES))
def test_bad_lora_file_is_one_line_before_the_model_loads(tiny_cfg, tmp_path, monkeypatch, capsys, bad):
    from core.config import run_cli
    from infer import generate

    good = _lora_file(tiny_cfg, tmp_path / "good", ["attn2.to_q", "attn2.to_k"], 1)
    make, expected = BAD_FILES[bad]
    path = make(good, tmp_path / "bad.safetensors")
    monkeypatch.setattr(generate, "load_components", lambda *a: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: generate.main([f"model.cache_dir={tiny_cfg.cache_dir}", f"loras=[{{path: {path}}}]"]))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and expected in err[0] and "loras[0].path" in err[0], err
