"""Wan2.1 I2V LoRA targets (diffusers module names per block) and the original-key map."""

from __future__ import annotations

# Cross-attention layer names per block (the stage-1 style targets) and the image branch.
CROSS_ATTN_TARGETS = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
IMAGE_BRANCH_TARGETS = ("attn2.add_k_proj", "attn2.add_v_proj")
SELF_ATTN_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")
FFN_TARGETS = ("ffn.net.0.proj", "ffn.net.2")

LORA_TARGETS = {
    "cross_attn": CROSS_ATTN_TARGETS,
    "image_branch": IMAGE_BRANCH_TARGETS,
    "self_attn": SELF_ATTN_TARGETS,
    "ffn": FFN_TARGETS,
}

# diffusers name -> original Wan name (ComfyUI and most trainers' exports).
DIFFUSERS_TO_ORIGINAL = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
