"""Pack a latent into a mixed fine/coarse patch sequence and unpack model outputs back.

A `Layout` is built once per allocation (index tensors only, no model): every later pack or
unpack is a few gathers. Patches keep the patch embedding's (C, 2, 2) layout:

- fine token: the (1, 2, 2) latent patch of its cell, exactly as the stock patchify;
- coarse spatial token: the 4x4 latent region of its 2x2 cells average-pooled 2x, i.e. entry
  (c, dh, dw) is the mean of cell (dh, dw)'s 2x2 latent pixels; spatio-temporal: also averaged
  over the pair's 2 frames. The same patch embedding then embeds it: no new weights.

Unpack: fine outputs scatter back; a coarse token's (C, 2, 2) output is its region at half
resolution, upsampled over it: `nearest` (entry (dh, dw) fills cell (dh, dw); exact inverse of
the pooling on region-constant latents) or `bilinear` (a half-resolution canvas of the whole
frame, fine regions average-pooled into it, upsampled 2x bilinearly and used on coarse cells
only: no blocky seams between neighbouring coarse tokens).

Reference detail: a coarse token flagged in `Allocation.detail` also gets, at unpack time in
the velocity (`coarse_correction`), the sub-token residual R(ref) = ref - U(P(ref)) of the
conditioning image's clean latent, so a static region keeps its texture exactly (docs/cat.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from cat.allocation import FINE, SPATIAL, SPATIOTEMPORAL, Allocation, cell_token_index, temporal_pairs

UPSAMPLE_MODES = ("nearest", "bilinear")
POOL_MODES = ("mean", "renoise")


@dataclass
class Layout:
    """Index tensors that map between the (F', H', W') cell grid and a packed token sequence."""

    grid: tuple[int, int, int]
    uniform: bool
    kind: torch.Tensor  # (S,) token kind in sequence order
    centres: torch.Tensor  # (S, 3) float64 (frame, row, col) centre of each token, patch units
    first_cell: torch.Tensor  # (S,) linear cell index of each token's first cell
    fine_cells: torch.Tensor  # (Nf,) linear cell index of the fine tokens, in sequence order
    spatial_blocks: torch.Tensor  # (Ns,) index into (F', H'//2, W'//2) blocks
    st_blocks: torch.Tensor  # (Nst,) index into (pairs, H'//2, W'//2)
    perm: torch.Tensor  # (S,) sequence position -> row of cat([fine, spatial, st])
    cell_token: torch.Tensor  # (F'H'W',) sequence position of the token covering each cell
    cell_quad: torch.Tensor  # (F'H'W', 4) which entries of the token's 2x2 patch fill the cell
    coarse_cells: torch.Tensor  # (F'H'W',) bool, cell is covered by a coarse token
    detail_cells: torch.Tensor  # (F'H'W',) bool, the cell's coarse token restores the reference's detail
    pair_firsts: torch.Tensor  # (P,) first frame of each temporal pair
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # rotary tables per rope/device

    @property
    def num_tokens(self) -> int:
        return int(self.kind.numel())

    def to(self, device: torch.device | str) -> Layout:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device)
        return Layout(**moved)


def build_layout(allocation: Allocation | None, grid: tuple[int, int, int] | None = None) -> Layout:
    """The layout for an allocation (None = uniform over `grid`)."""
    if allocation is None:
        if grid is None:
            raise ValueError("build_layout needs an allocation or a grid")
        allocation = Allocation.uniform(grid)
    grid = allocation.grid
    f_, h_, w_ = grid
    bh, bw = h_ // 2, w_ // 2
    tab = allocation.tokens()
    first_cell = (tab.f * h_ + tab.h) * w_ + tab.w
    centres = torch.stack([tab.f + (tab.nf - 1) / 2, tab.h + (tab.nh - 1) / 2, tab.w + (tab.nw - 1) / 2], dim=1)
    is_f, is_s, is_st = (tab.kind == k for k in (FINE, SPATIAL, SPATIOTEMPORAL))
    spatial_blocks = (tab.f[is_s] * bh + tab.h[is_s] // 2) * bw + tab.w[is_s] // 2
    st_blocks = ((tab.f[is_st] - 1) // 2 * bh + tab.h[is_st] // 2) * bw + tab.w[is_st] // 2
    concat_order = torch.cat([torch.nonzero(m).flatten() for m in (is_f, is_s, is_st)])
    perm = torch.argsort(concat_order)
    token, quad = cell_token_index(tab, grid)
    assert bool((token >= 0).all()), "allocation leaves a cell uncovered"
    coarse = quad >= 0
    cell_quad = torch.arange(4).repeat(token.numel(), 1)
    cell_quad[coarse] = quad[coarse].unsqueeze(1).expand(-1, 4)
    return Layout(
        grid=grid,
        uniform=allocation.is_uniform,
        kind=tab.kind,
        centres=centres.to(torch.float64),
        first_cell=first_cell,
        fine_cells=first_cell[is_f],
        spatial_blocks=spatial_blocks,
        st_blocks=st_blocks,
        perm=perm,
        cell_token=token,
        cell_quad=cell_quad,
        coarse_cells=coarse,
        detail_cells=allocation.cell_detail().flatten(),
        pair_firsts=torch.tensor([a for a, _ in temporal_pairs(f_)], dtype=torch.int64),
    )


def _check_latent(x: torch.Tensor, layout: Layout) -> None:
    f_, h_, w_ = layout.grid
    if x.ndim != 5 or tuple(x.shape[2:]) != (f_, 2 * h_, 2 * w_):
        raise ValueError(
            f"latent of shape {tuple(x.shape)} does not match the allocation's grid {layout.grid}: "
            f"expected (B, C, {f_}, {2 * h_}, {2 * w_})"
        )


def gather_patches(
    x: torch.Tensor,
    layout: Layout,
    pool: str = "mean",
    sigma: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    noisy_channels: int | None = None,
) -> torch.Tensor:
    """(B, C, F', 2H', 2W') latent -> (B, S, C, 2, 2) token patches in sequence order.

    `pool="renoise"` (needs `sigma`, (B,) noise level in [0, 1]) adds fresh Gaussian noise
    sigma * sqrt(1 - 1/k) to the first `noisy_channels` channels (the model family's noisy
    latent; None = all C) of a token that averaged k = 4 or 8
    patches, so the coarse token carries the noise std the timestep claims (a mean of k
    independent noises has std sigma / sqrt(k)); the condition channels are left as averaged."""
    if pool not in POOL_MODES:
        raise ValueError(f"pool={pool!r}; choose one of {POOL_MODES}")
    _check_latent(x, layout)
    b, c = x.shape[:2]
    f_, h_, w_ = layout.grid
    bh, bw = h_ // 2, w_ // 2
    cells = x.view(b, c, f_, h_, 2, w_, 2).permute(0, 2, 3, 5, 1, 4, 6)  # (B, F, H', W', C, 2, 2)
    parts = [cells.reshape(b, f_ * h_ * w_, c, 2, 2)[:, layout.fine_cells]]
    n_coarse = layout.spatial_blocks.numel() + layout.st_blocks.numel()
    if n_coarse:
        means = cells[:, :, : 2 * bh, : 2 * bw].mean(dim=(-1, -2))  # (B, F, 2bh, 2bw, C)
        blocks = means.reshape(b, f_, bh, 2, bw, 2, c).permute(0, 1, 2, 4, 6, 3, 5)  # (B, F, bh, bw, C, 2, 2)
        sp = blocks.reshape(b, f_ * bh * bw, c, 2, 2)[:, layout.spatial_blocks]
        if pool == "renoise":
            sp = _renoise(sp, 4, sigma, generator, noisy_channels or c)
        parts.append(sp)
        if layout.st_blocks.numel():
            pf = layout.pair_firsts
            st = (blocks[:, pf] + blocks[:, pf + 1]) * 0.5
            st = st.reshape(b, -1, c, 2, 2)[:, layout.st_blocks]
            if pool == "renoise":
                st = _renoise(st, 8, sigma, generator, noisy_channels or c)
            parts.append(st)
    packed = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    return packed if layout.uniform else packed[:, layout.perm]


def _renoise(
    patches: torch.Tensor, k: int, sigma: torch.Tensor | None, generator: torch.Generator | None, noisy: int
) -> torch.Tensor:
    if sigma is None:
        raise ValueError("pool='renoise' needs sigma (the noise level of the latent, (B,) in [0, 1])")
    noise = torch.randn(patches[:, :, :noisy].shape, generator=generator, dtype=patches.dtype, device="cpu")
    scale = (sigma.to(patches.dtype) * (1.0 - 1.0 / k) ** 0.5).view(-1, 1, 1, 1, 1).to(patches.device)
    out = patches.clone()
    out[:, :, :noisy] += scale * noise.to(patches.device)
    return out


def scatter_patches(patches: torch.Tensor, layout: Layout, upsample: str = "nearest") -> torch.Tensor:
    """(B, S, C, 2, 2) token patches -> (B, C, F', 2H', 2W') latent (see the module docstring)."""
    if upsample not in UPSAMPLE_MODES:
        raise ValueError(f"upsample={upsample!r}; choose one of {UPSAMPLE_MODES}")
    b, s, c = patches.shape[:3]
    f_, h_, w_ = layout.grid
    if s != layout.num_tokens:
        raise ValueError(f"{s} token patches for a layout of {layout.num_tokens} tokens")
    flat = patches.reshape(b, s, c, 4)
    if layout.uniform:
        cells = flat
    else:
        per_cell = flat[:, layout.cell_token]  # (B, cells, C, 4)
        index = layout.cell_quad.view(1, -1, 1, 4).expand(b, -1, c, 4)
        cells = per_cell.gather(3, index)
    out = cells.view(b, f_, h_, w_, c, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(b, c, f_, 2 * h_, 2 * w_)
    if upsample == "bilinear" and bool(layout.coarse_cells.any()):
        out = _smooth_coarse(out, layout)
    return out


def _smooth_coarse(out: torch.Tensor, layout: Layout) -> torch.Tensor:
    b, c, f_, h, w = out.shape
    frames = out.transpose(1, 2).reshape(b * f_, c, h, w)
    half = F.avg_pool2d(frames, 2)  # coarse regions: exactly the token's 2x2 patch
    up = F.interpolate(half, scale_factor=2, mode="bilinear", align_corners=False)
    up = up.view(b, f_, c, h, w).transpose(1, 2)
    mask = layout.coarse_cells.view(1, 1, f_, h // 2, 1, w // 2, 1).expand(1, 1, f_, h // 2, 2, w // 2, 2)
    return torch.where(mask.reshape(1, 1, f_, h, w), up, out)


def sigma_per_cell(sigma: torch.Tensor | float, layout: Layout, batch: int) -> torch.Tensor:
    """Noise level broadcastable over a (B, C, F', 2H', 2W') latent, float32.

    `sigma`: a number, (B,), or per cell (B, F'H'W') (Wan 2.2 style per-token timesteps / 1000);
    a per-cell sigma is read at each token's first cell, as `embed_conditions` reads timesteps,
    so every cell of a coarse token uses the noise level its token was told."""
    s = torch.as_tensor(sigma, dtype=torch.float32, device=layout.cell_token.device)
    if s.ndim <= 1:
        return s.reshape(-1, 1, 1, 1, 1).expand(batch, 1, 1, 1, 1)
    f_, h_, w_ = layout.grid
    if s.shape[1] != f_ * h_ * w_:
        raise ValueError(f"per-cell sigma of shape {tuple(s.shape)} does not match the grid {layout.grid}")
    if not layout.uniform:
        s = s[:, layout.first_cell[layout.cell_token]]
    s = s.view(-1, 1, f_, h_, 1, w_, 1).expand(-1, 1, f_, h_, 2, w_, 2)
    return s.reshape(-1, 1, f_, 2 * h_, 2 * w_)


def inverse_sigma(sigma: torch.Tensor) -> torch.Tensor:
    """1 / sigma, and 0 where sigma is 0 (a clean cell: nothing to remove)."""
    return torch.where(sigma > 0, 1.0 / sigma.clamp_min(1e-30), torch.zeros_like(sigma))


def coarse_correction(
    noisy: torch.Tensor,
    packed_noisy: torch.Tensor,
    sigma: torch.Tensor | float,
    layout: Layout,
    upsample: str = "nearest",
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """(x_s - U(y)) / sigma, float32: what a coarse cell's velocity is missing (docs/cat.md).

    `noisy` is x_s, the (B, C, F', 2H', 2W') noisy channels the model was given; `packed_noisy`
    the same channels of the token patches it actually saw, y = P(x_s) (+ the extra noise of
    `pool="renoise"`), (B, S, C, 2, 2); U = `scatter_patches`. Added to the unpacked output
    U(v_c), it turns the coarse token's clean estimate y - sigma v_c into the region's:
    x_s - sigma (U(v_c) + correction) = U(y - sigma v_c). Exactly 0 on fine cells (U(y) = x_s).

    Cells of tokens flagged for reference detail (`layout.detail_cells`) also get - R(ref) / sigma,
    R(ref) = ref - U(P(ref)) with `reference` the conditioning image's clean latent (B or 1, C,
    F' or 1, 2H', 2W'; see `reference_detail`): their clean estimate becomes U(y - sigma v_c) + R(ref)."""
    up = scatter_patches(packed_noisy, layout, upsample=upsample)
    inv = inverse_sigma(sigma_per_cell(sigma, layout, noisy.shape[0]).to(noisy.device))
    residual = noisy.float() - up.float()
    if bool(layout.detail_cells.any()):
        if reference is None:
            raise ValueError("this allocation restores the reference frame's detail in some tokens, but no reference "
                             "latent was given: pass the conditioning image's latent, or allocate without reference maps")
        residual = residual - reference_detail(reference, noisy.shape, layout, upsample)
    return residual * inv


def reference_detail(reference: torch.Tensor, shape: torch.Size, layout: Layout, upsample: str = "nearest") -> torch.Tensor:
    """R(ref) on the cells of detail-flagged tokens, 0 elsewhere: (B, C, F', 2H', 2W') float32.

    `reference`: (B or 1, C, F' or 1, 2H', 2W') clean latent of the conditioning image: best the
    image held still over the clip (`ModelFamily.still_latent`, what a static region's latent is in
    every frame), or its one latent frame, held on every frame of `shape`; R = I - U P."""
    b, c, f_, h, w = shape
    if (reference.ndim != 5 or reference.shape[0] not in (1, b) or reference.shape[1] != c
            or reference.shape[2] not in (1, f_) or tuple(reference.shape[3:]) != (h, w)):
        raise ValueError(f"reference latent of shape {tuple(reference.shape)} does not match {(b, c, f_, h, w)} "
                         "(or one frame of it)")
    ref = reference.float().to(layout.detail_cells.device).expand(b, c, f_, h, w)
    detail = ref - scatter_patches(gather_patches(ref, layout), layout, upsample=upsample)
    mask = layout.detail_cells.view(1, 1, f_, h // 2, 1, w // 2, 1).expand(1, 1, f_, h // 2, 2, w // 2, 2)
    return detail * mask.reshape(1, 1, f_, h, w)
