"""Deterministic synthetic clips: the SI/TI redundancy grid (benchmark) and the cinematic style set.

python -m data.synth grid  --output_dir DIR [--height 2160 --width 3840 --frames 33 --fps 16 --seed 0]
python -m data.synth style --output_dir DIR [--n_clips 8 --height 176 --width 320 ... --neutral]
"""

from data.synth.grid import LEVELS, SI_BANDS, TI_BANDS, load_grid, make_redundancy_grid, measure
from data.synth.style import look_metrics, make_neutral_set, make_style_set

__all__ = [
    "LEVELS",
    "SI_BANDS",
    "TI_BANDS",
    "load_grid",
    "look_metrics",
    "make_neutral_set",
    "make_redundancy_grid",
    "make_style_set",
    "measure",
]
