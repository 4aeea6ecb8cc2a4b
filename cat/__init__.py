"""Content-adaptive tokenization (CAT) for the Wan2.1 transformer: mixed fine/coarse tokens
chosen from the clip's own spatial and temporal redundancy. See docs/cat.md."""

import core  # noqa: F401  (offline environment first)
from cat.allocation import Allocation, allocate_from_complexity
from cat.api import allocate
from cat.complexity import Complexity, clip_si_ti, latent_complexity, region_complexity
from cat.forward import cat_forward, embed_conditions, pack, project_out, run_blocks, unpack
from cat.oracle import oracle_velocity, pooled_content
from cat.policy import CatPolicy, TokenPolicy, UniformPolicy
from cat.tokenizer import Layout, build_layout

__all__ = [
    "Allocation",
    "CatPolicy",
    "Complexity",
    "Layout",
    "TokenPolicy",
    "UniformPolicy",
    "allocate",
    "allocate_from_complexity",
    "build_layout",
    "cat_forward",
    "clip_si_ti",
    "embed_conditions",
    "latent_complexity",
    "oracle_velocity",
    "pack",
    "pooled_content",
    "project_out",
    "region_complexity",
    "run_blocks",
    "unpack",
]
