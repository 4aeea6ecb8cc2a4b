"""Stage 1 - style: LoRA on cross-attention only, stock tokens, windows and single keyframes.

    [accelerate launch [--config_file configs/accelerate/X.yaml]] -m train.stage1 --config configs/stage1_style.yaml [k=v ...]
"""

from __future__ import annotations

from core.config import run_cli
from train.loop import run_stage
from train.trainer import StageSpec

STAGE = StageSpec(
    name="style",
    command="train.stage1",
    default_config="configs/stage1_style.yaml",
    target_presets=("cross_attn",),  # + the family's "image_branch" preset with lora.image_branch=true
    keyframes="include",
    tokenization="stock",
    needs_base_lora=False,
    unused_keys=(
        ("tokenization", "stage 1 trains on stock tokens; CAT settings belong to train.stage2"),
        ("base_lora", "stage 1 starts from the base model; base_lora is train.stage2's stage-1 LoRA"),
        ("base_lora_mode", "stage 1 has no base LoRA; base_lora_mode belongs to train.stage2"),
    ),
)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv)


if __name__ == "__main__":
    run_cli(main)
