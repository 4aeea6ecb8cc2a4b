"""Value checks shared by the config schemas: frame-count and size rules (numbers from the model
family's geometry), resolution presets."""

from __future__ import annotations

from core.config import ConfigError

# Landscape base sizes (height, width) of the resolution presets; other aspect ratios keep the area.
RESOLUTION_PRESETS = {"480p": (480, 832), "720p": (720, 1280)}


def check_frames(n: int, key: str, vae_t: int) -> None:
    """Causal video VAEs compress time `vae_t`x with one extra first frame (the model family's
    `geometry.vae_t`: 4 for the Wan families): clips need vae_t*k+1 frames."""
    if n < 1 or (n - 1) % vae_t:
        lo, hi = 1 + vae_t * ((n - 1) // vae_t), 1 + vae_t * ((n - 1) // vae_t + 1)
        raise ConfigError(f"{key}={n} is not of the form {vae_t}k+1 (the model's VAE); use {max(lo, 1)} or {hi}")


def check_size(height: int, width: int, multiple: int, prefix: str = "") -> None:
    """Pixel sizes must be whole patch-grid cells: the model family's `geometry.cell_px` (16 px for
    Wan2.1: VAE 8x, 2x2 patches; 32 for Wan2.2 TI2V). The error names the nearest valid value(s);
    `prefix` is the keys' section ("validation.")."""
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            below = value // multiple * multiple
            above = below + multiple
            if below < multiple or above - value < value - below:
                nearest = str(max(above, multiple))
            elif value - below < above - value:
                nearest = str(below)
            else:
                nearest = f"{below} or {above}"
            raise ConfigError(f"{prefix}{key}={value} must be a positive multiple of {multiple}; use {nearest}")


def resolution_base(name: str) -> tuple[int, int]:
    """(height, width) of a landscape bucket for a preset name or `<N>p`; multiples of 16."""
    if name in RESOLUTION_PRESETS:
        return RESOLUTION_PRESETS[name]
    digits = name[:-1] if name.endswith("p") else ""
    if not digits.isdigit() or int(digits) < 16 or int(digits) % 16:
        raise ConfigError(
            f"resolution='{name}' is unknown; use {' | '.join(RESOLUTION_PRESETS)} or <N>p with N a multiple of 16"
        )
    height = int(digits)
    return height, max(16, round(height * 16 / 9 / 16) * 16)
