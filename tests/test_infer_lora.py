"""LoRA stacks at inference: a LoRA changes the output of both A/B arms, and its weight scales the change."""

from __future__ import annotations

import torch

from core.schema import LoraFile
from core.wan import load_components
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
