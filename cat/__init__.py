"""Content-adaptive tokenization (CAT) for the Wan2.1 transformer: mixed fine/coarse tokens
chosen from the clip's own spatial and temporal redundancy. See docs/cat.md."""

import core  # noqa: F401  (offline environment first)
from cat.allocation import Allocation, allocate_from_complexity
from cat.api import allocate
from cat.complexity import Complexity, clip_si_ti, latent_complexity, region_complexity

__all__ = [
    "Allocation",
    "Complexity",
    "allocate",
    "allocate_from_complexity",
    "clip_si_ti",
    "latent_complexity",
    "region_complexity",
]
