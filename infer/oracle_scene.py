"""The perfect-denoiser harness's embedded scene, its arms and its per-class errors (`infer.oracle`).

Scene (token grid 3x8x8, latent C x 3 x 16 x 16, C the family's noisy channels): the left half
is region-constant (x0 constant over every 4x4 latent region, i.e. every coarse token's region,
and over all frames); the right half is Gaussian texture, moving (a fresh draw on every frame)
in its top half and static in its bottom half (every frame equal to latent frame 0, the
conditioning image's latent: the reference). The unconditional perfect model of CFG aims at
another scene that shares the conditioning image (frame 0) and the static texture: both CFG
branches see the same image, so the guided target keeps what the image fixes (docs/cat.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

GRID = (3, 8, 8)
RHOS = (1.0, 0.75, 0.5, 0.25)
REF_RHOS = (0.5, 0.25)
REF = " +ref"  # suffix of the arms allocated from maps against the reference frame
CLASSES = ("fine", "coarse_region_constant", "coarse_textured", "coarse_static")


@dataclass
class Scene:
    """x0 (1, C, F', 2H', 2W'), and per cell (F', H', W') bool: region-constant (`flat`) and
    static textured (`static`); the rest is moving texture."""

    x0: torch.Tensor
    flat: torch.Tensor
    static: torch.Tensor

    @property
    def reference(self) -> torch.Tensor:
        """The conditioning image's clean latent: latent frame 0, (1, C, 1, 2H', 2W')."""
        return self.x0[:, :, :1]


def scene(grid: tuple[int, int, int] = GRID, seed: int = 0, family: Any = None) -> Scene:
    """The embedded scene (module docstring); `family` sets the latent channels (None = default family)."""
    from core.models import get_family

    c = (family or get_family()).geometry.noisy_channels
    f_, h_, w_ = grid
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, c, 1, 1, 1, generator=g)
    blocks = base + 0.05 * torch.randn(1, c, 1, h_ // 2, w_ // 2, generator=g)
    flat_part = blocks.repeat_interleave(4, dim=3).repeat_interleave(4, dim=4).expand(1, c, f_, -1, -1)
    x0 = torch.randn(1, c, f_, 2 * h_, 2 * w_, generator=g)
    half = 2 * (w_ // 2 // 2) * 2  # latent columns of whole blocks in the left half
    rows = 2 * (h_ // 2 // 2) * 2  # latent rows of whole blocks in the top half
    x0[..., :half] = flat_part[..., :half]
    x0[..., rows:, half:] = x0[:, :, :1, rows:, half:]  # static texture: frame 0 on every frame
    flat = torch.zeros(f_, h_, w_, dtype=torch.bool)
    flat[..., : half // 2] = True
    static = torch.zeros(f_, h_, w_, dtype=torch.bool)
    static[:, rows // 2 :, half // 2 :] = True
    return Scene(x0, flat, static)


def clean_latent(
    grid: tuple[int, int, int] = GRID, seed: int = 0, family: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, flat) of `scene`."""
    s = scene(grid, seed, family)
    return s.x0, s.flat


def uncond_latent(main: Scene, seed: int, family: Any = None) -> torch.Tensor:
    """The unconditional perfect model's x0 for CFG: another scene (`seed`) that keeps `main`'s
    conditioning image (latent frame 0) and static texture (the image fixes both in either branch)."""
    other = scene(tuple(main.flat.shape), seed, family).x0.clone()
    other[:, :, :1] = main.x0[:, :, :1]
    keep = main.static.repeat_interleave(2, 1).repeat_interleave(2, 2)
    other[:, :, keep] = main.x0[:, :, keep]
    return other


def image_condition(x0: torch.Tensor, family: Any = None) -> torch.Tensor:
    """The family's image condition for a clip whose conditioning image has x0's frame 0 as its
    latent: Wan2.1 (20 channels) = the 4-channel mask marking frame 0 given + the latent of
    (image, zeros...), whose frame 0 is the image's (causal VAE; later frames are left 0 here, a
    perfect model ignores them); Wan2.2 (no condition channels) = the first latent frame."""
    from core.models import get_family

    geometry = (family or get_family()).geometry
    if geometry.condition_channels == 0:
        return x0[:, :, :1]
    b, c, f_, h, w = x0.shape
    if geometry.condition_channels != geometry.vae_t + c:
        raise ValueError(f"no image condition for {geometry.condition_channels} condition channels and {c} latent ones")
    mask = torch.zeros(b, geometry.vae_t, f_, h, w, dtype=x0.dtype, device=x0.device)
    mask[:, :, 0] = 1
    latent = torch.zeros_like(x0)
    latent[:, :, :1] = x0[:, :, :1]
    return torch.cat([mask, latent], dim=1)


def allocations(x0: torch.Tensor, grid: tuple[int, int, int], reference: bool = False) -> dict[str, Any]:
    """The arms: name -> Allocation (None = uniform), from x0's latent complexity; `reference`
    adds the arms allocated from maps against the reference frame x0[:, :, :1] (names end in " +ref":
    each coarse token picks plain pooling or pooling + the reference's detail)."""
    from cat import allocate_from_complexity, latent_complexity
    from core.schema import CatInferConfig

    thresholds = tuple(CatInferConfig().latent_thresholds)
    maps = latent_complexity(x0, grid)
    arms: dict[str, Any] = {"uniform": None}
    for rho in RHOS:
        arms[f"rho {rho:g}"] = allocate_from_complexity(maps, rho=rho)
    arms["thresholds default"] = allocate_from_complexity(maps, thresholds=thresholds)
    if reference:
        ref_maps = latent_complexity(x0, grid, reference=x0[:, :, :1])
        for rho in REF_RHOS:
            arms[f"rho {rho:g}{REF}"] = allocate_from_complexity(ref_maps, rho=rho)
        arms[f"thresholds default{REF}"] = allocate_from_complexity(ref_maps, thresholds=thresholds)
    return arms


def cell_errors(
    x: torch.Tensor,
    target: torch.Tensor,
    allocation: Any,
    flat: torch.Tensor,
    upsample: str = "nearest",
    static: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
) -> dict[str, float | None]:
    """Mean |x - target| per cell class (None when a class has no coarse cells; `static` None: the
    static texture counts as textured), the textured coarse cells' distance to the pooled content
    U(P(target)) (+ R(reference) on detail cells: what the corrected sampler converges to), and
    the number of coarse cells that restore the reference's detail."""
    from cat import pooled_content

    f_, h_, w_ = flat.shape
    static = torch.zeros_like(flat) if static is None else static
    err = (x.float() - target.float()).abs()

    def per_cell(e: torch.Tensor) -> torch.Tensor:  # (1, C, F', 2H', 2W') -> (F', H', W')
        return e.view(e.shape[1], f_, h_, 2, w_, 2).mean(dim=(0, 3, 5))

    cells = per_cell(err)
    if allocation is None or allocation.is_uniform:
        coarse = torch.zeros_like(flat)
        pooled, detail = cells, 0
    else:
        coarse = allocation.cell_levels() > 0
        ref = reference if allocation.uses_reference else None
        pooled = per_cell((x.float() - pooled_content(target, allocation, upsample, reference=ref)).abs())
        detail = int(allocation.cell_detail().sum())
    masks = {
        "fine": ~coarse,
        "coarse_region_constant": coarse & flat,
        "coarse_textured": coarse & ~flat & ~static,
        "coarse_static": coarse & static,
    }
    out: dict[str, float | None] = {k: float(cells[m].mean()) if bool(m.any()) else None for k, m in masks.items()}
    m = masks["coarse_textured"]
    out["coarse_textured_to_pooled"] = float(pooled[m].mean()) if bool(m.any()) else None
    out["detail_cells"] = detail
    return out
