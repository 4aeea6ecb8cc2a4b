"""Stage 2 - motion: the stage-1 LoRA frozen (or merged), a new LoRA on self-attention + FFN,
trained through CAT tokens allocated from the real frames' spatial/temporal complexity.

    [accelerate launch [--config_file configs/accelerate/X.yaml]] -m train.stage2 --config configs/stage2_motion.yaml [k=v ...]
"""

from __future__ import annotations

from core.config import run_cli
from train.loop import run_stage
from train.trainer import StageSpec

STAGE = StageSpec(
    name="motion",
    command="train.stage2",
    default_config="configs/stage2_motion.yaml",
    target_presets=("self_attn", "ffn"),
    keyframes="exclude",  # motion needs time: single frames teach nothing here
    tokenization="cat",
    needs_base_lora=True,
)


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv)


if __name__ == "__main__":
    run_cli(main)
