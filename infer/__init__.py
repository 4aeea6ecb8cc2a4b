"""Inference: image-to-video generation with stacked LoRAs, and the CAT vs uniform A/B runner."""

import core  # noqa: F401  (offline environment before any hub import)
