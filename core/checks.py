"""Value checks shared by the config schemas: Wan's frame-count and size rules, resolution presets."""

from __future__ import annotations

from core.config import ConfigError

# Landscape base sizes (height, width) of the resolution presets; other aspect ratios keep the area.
RESOLUTION_PRESETS = {"480p": (480, 832), "720p": (720, 1280)}


def check_frames(n: int, key: str) -> None:
    """Wan's VAE compresses time 4x with one extra first frame: clips need 4k+1 frames."""
    if n < 1 or (n - 1) % 4:
        lo, hi = 1 + 4 * ((n - 1) // 4), 1 + 4 * ((n - 1) // 4 + 1)
        raise ConfigError(f"{key}={n} is not of the form 4k+1 (Wan VAE); use {max(lo, 1)} or {hi}")


def check_size(height: int, width: int, multiple: int = 16) -> None:
    """Pixel sizes must be whole patch-grid cells: 16 px for Wan2.1 (VAE 8x, 2x2 patches), the model
    family's `geometry.cell_px` in general (32 for Wan2.2 TI2V)."""
    for key, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            raise ConfigError(
                f"{key}={value} must be a positive multiple of {multiple}; use {max(multiple, value // multiple * multiple)}"
            )


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
