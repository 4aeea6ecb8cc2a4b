"""Two-stage LoRA training of Wan2.1 I2V (stage 1 style, stage 2 motion on CAT tokens). See docs/train.md."""

import core  # noqa: F401  (offline environment before any hub import)
