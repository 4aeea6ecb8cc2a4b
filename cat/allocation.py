"""Which regions of the patch grid become coarse tokens: the `Allocation` and how it is chosen.

The (F', H', W') patch grid is tiled by 2x2 spatial blocks (block (bh, bw) covers cells
h in {2bh, 2bh+1}, w in {2bw, 2bw+1}); an odd last row or column of cells is not part of any
block and stays fine. Latent frames are paired in time as (1, 2), (3, 4), ...: frame 0 (the
conditioning frame, which encodes one pixel frame where the others encode four) is never merged
in time, nor is a last frame left without a partner (F' even). Each block in each frame has a level:

- 0 fine: 4 tokens, one per (1, 2, 2) patch, exactly as the stock model;
- 1 coarse spatial: 1 token for the 2x2 patches of that frame;
- 2 coarse spatio-temporal: 1 token for the 2x2 patches of both frames of a pair (both frames
  of the pair carry level 2).

Choosing: a block's spatial score is the max of its cells' spatial complexity; a pair's
temporal score the max of its cells' temporal complexity over both frames (pixel maps: the luma
each cell loses to pooling, `cat.complexity`, so a block is coarsened only where all of it loses
little). The coarsening
moves (fine -> spatial: saves 3 tokens, keyed by the spatial score; spatial -> spatio-temporal:
saves 1, keyed by max(both frames' spatial scores, temporal_weight * temporal score)) are sorted
by key, lowest first (ties: spatial moves first, then raster order), so lowest complexity is
coarsened first and a temporal merge never precedes the spatial merges it needs. Mode `rho`
takes the prefix of that order whose token count is closest to rho * uniform tokens (within one
move, i.e. 3 tokens); mode `thresholds` = (spatial, temporal) coarsens every block whose score is
below the threshold. Both are deterministic functions of the complexity maps. A score of +inf
(or NaN) means unknown and is never coarsened (e.g. temporal complexity from a single image).

Reference detail: with maps that also measure each cell against the conditioning frame
(`Complexity.spatial_ref`, image-to-video), every coarse token picks the cheaper of two unpacks:
its pooled content alone, or its pooled content plus the reference frame's sub-token detail
(`Allocation.detail`; exact wherever the region is static, whatever its texture). Its spatial
score is then the smaller of the two, and a spatio-temporal token's the smaller of the two
modes' max(both frames' spatial scores, temporal score); a tie keeps the plain unpack.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from cat.complexity import Complexity

FINE, SPATIAL, SPATIOTEMPORAL = 0, 1, 2
KIND_NAMES = ("fine", "spatial", "spatiotemporal")
# Token extent (frames, rows, cols of cells) per kind.
EXTENT = {FINE: (1, 1, 1), SPATIAL: (1, 2, 2), SPATIOTEMPORAL: (2, 2, 2)}
FORMAT = 1
INF = float("inf")


def temporal_pairs(num_frames: int) -> list[tuple[int, int]]:
    """Latent frame pairs that may merge in time: (1, 2), (3, 4), ...; frame 0 stays alone."""
    return [(f, f + 1) for f in range(1, num_frames - 1, 2)]


@dataclass(frozen=True)
class TokenTable:
    """The tokens of an allocation in sequence order (raster order of each token's first cell).

    Each field is a (N,) int64 tensor: `kind` (0 fine, 1 spatial, 2 spatio-temporal), first cell
    `f`, `h`, `w`, and extent `nf`, `nh`, `nw` in cells."""

    kind: torch.Tensor
    f: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    nf: torch.Tensor
    nh: torch.Tensor
    nw: torch.Tensor

    def __len__(self) -> int:
        return int(self.kind.numel())


@dataclass
class Allocation:
    """A partition of the (F', H', W') patch grid into fine, coarse-spatial and coarse
    spatio-temporal tokens (see the module docstring), shared by every sample of a batch.

    `levels` is (F', H'//2, W'//2) int8: the level of each 2x2 block in each latent frame.
    `detail` (same shape, bool; default all False): coarse blocks whose token also restores the
    reference frame's sub-token detail when unpacked (module docstring, docs/cat.md).
    `info` records how it was chosen (mode, rho, thresholds); it is saved with it."""

    grid: tuple[int, int, int]
    levels: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    detail: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)  # type: ignore[assignment]
        f_, h_, w_ = self.grid
        want = (f_, h_ // 2, w_ // 2)
        self.levels = self.levels.to(device="cpu", dtype=torch.int8).contiguous()
        if tuple(self.levels.shape) != want:
            raise ValueError(f"levels shape {tuple(self.levels.shape)} does not match grid {self.grid}: want {want}")
        if self.levels.numel() and (self.levels.min() < 0 or self.levels.max() > 2):
            raise ValueError("levels must be 0 (fine), 1 (spatial) or 2 (spatio-temporal)")
        st = self.levels == SPATIOTEMPORAL
        paired = torch.zeros(f_, dtype=torch.bool)
        for a, b in temporal_pairs(f_):
            paired[a] = paired[b] = True
            if not torch.equal(st[a], st[b]):
                raise ValueError(f"spatio-temporal blocks of frames {a} and {b} must match")
        if st[~paired].any():
            raise ValueError("spatio-temporal level only on paired frames (1, 2), (3, 4), ...; frame 0 stays alone")
        if self.detail is None:
            self.detail = torch.zeros(want, dtype=torch.bool)
        self.detail = self.detail.to(device="cpu", dtype=torch.bool).contiguous()
        if tuple(self.detail.shape) != want:
            raise ValueError(f"detail shape {tuple(self.detail.shape)} does not match grid {self.grid}: want {want}")
        if (self.detail & (self.levels == FINE)).any():
            raise ValueError("detail is only for coarse blocks (a fine token carries its own detail)")
        for a, b in temporal_pairs(f_):
            if not torch.equal(self.detail[a] & st[a], self.detail[b] & st[b]):
                raise ValueError(f"spatio-temporal blocks of frames {a} and {b} must share their detail flag")

    # ------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, grid: tuple[int, int, int]) -> Allocation:
        """Every token fine: the stock tokenization."""
        f_, h_, w_ = grid
        return cls(grid, torch.zeros(f_, h_ // 2, w_ // 2, dtype=torch.int8), {"mode": "uniform"})

    # ------------------------------------------------------------ counts
    @property
    def uniform_tokens(self) -> int:
        f_, h_, w_ = self.grid
        return f_ * h_ * w_

    def counts(self) -> dict[str, int]:
        """Tokens of each kind."""
        lv = self.levels
        blocks_fine = int((lv == FINE).sum())
        f_, h_, w_ = self.grid
        leftover = f_ * (h_ * w_ - 4 * (h_ // 2) * (w_ // 2))
        return {
            "fine": 4 * blocks_fine + leftover,
            "spatial": int((lv == SPATIAL).sum()),
            "spatiotemporal": int((lv == SPATIOTEMPORAL).sum()) // 2,
        }

    @property
    def num_tokens(self) -> int:
        return sum(self.counts().values())

    @property
    def keep_ratio(self) -> float:
        """Tokens / uniform tokens."""
        return self.num_tokens / max(1, self.uniform_tokens)

    @property
    def is_uniform(self) -> bool:
        return not bool(self.levels.any())

    # ------------------------------------------------------------ geometry
    @property
    def uses_reference(self) -> bool:
        """True when some coarse token restores the reference frame's detail (needs a conditioning image)."""
        return bool(self.detail.any())

    def _per_cell(self, blocks: torch.Tensor) -> torch.Tensor:
        """A (F', H'//2, W'//2) block map spread over the (F', H', W') cells (odd leftovers 0)."""
        f_, h_, w_ = self.grid
        out = torch.zeros(f_, h_, w_, dtype=blocks.dtype)
        bh, bw = h_ // 2, w_ // 2
        out[:, : 2 * bh, : 2 * bw] = blocks.repeat_interleave(2, 1).repeat_interleave(2, 2)
        return out

    def cell_detail(self) -> torch.Tensor:
        """(F', H', W') bool: cells whose coarse token restores the reference frame's detail."""
        return self._per_cell(self.detail)

    def cell_levels(self) -> torch.Tensor:
        """(F', H', W') int8 level of every cell (odd leftovers are 0)."""
        return self._per_cell(self.levels)

    def tokens(self) -> TokenTable:
        """The token table in sequence order; all-fine gives the stock (f, h, w) raster order."""
        f_, h_, w_ = self.grid
        cells = self.cell_levels()
        fine = torch.nonzero(cells == FINE)
        sp = torch.nonzero(self.levels == SPATIAL)
        st = torch.nonzero(self.levels == SPATIOTEMPORAL)
        st = st[(st[:, 0] % 2) == 1]  # first frame of each pair (pairs start at odd frames)
        kinds, firsts = [], []
        for kind, idx, scale in ((FINE, fine, 1), (SPATIAL, sp, 2), (SPATIOTEMPORAL, st, 2)):
            first = idx.clone()
            first[:, 1:] *= scale
            firsts.append(first)
            kinds.append(torch.full((len(idx),), kind, dtype=torch.int64))
        first = torch.cat(firsts)
        kind = torch.cat(kinds)
        order = torch.argsort((first[:, 0] * h_ + first[:, 1]) * w_ + first[:, 2])
        first, kind = first[order], kind[order]
        ext = torch.tensor([EXTENT[FINE], EXTENT[SPATIAL], EXTENT[SPATIOTEMPORAL]], dtype=torch.int64)[kind]
        return TokenTable(kind, first[:, 0], first[:, 1], first[:, 2], ext[:, 0], ext[:, 1], ext[:, 2])

    def token_of_cell(self) -> torch.Tensor:
        """(F', H', W') int64: the sequence index of the token covering each cell."""
        return cell_token_index(self.tokens(), self.grid)[0].view(self.grid)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able: levels as one digit string per block row, frame by frame."""
        rows = [["".join(str(int(v)) for v in row) for row in frame] for frame in self.levels.tolist()]
        out = {
            "format": FORMAT,
            "grid": list(self.grid),
            "levels": rows,
            "counts": self.counts(),
            "tokens": self.num_tokens,
            "uniform_tokens": self.uniform_tokens,
            "keep_ratio": round(self.keep_ratio, 6),
            "info": self.info,
        }
        if self.uses_reference:  # absent = no reference detail (files written before it existed)
            out["detail"] = [["".join(str(int(v)) for v in row) for row in frame] for frame in self.detail.tolist()]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Allocation:
        if data.get("format") != FORMAT:
            raise ValueError(f"unknown allocation format {data.get('format')!r} (expected {FORMAT})")
        grid = tuple(int(g) for g in data["grid"])
        f_, h_, w_ = grid
        flat = [int(c) for frame in data["levels"] for row in frame for c in row]
        if len(flat) != f_ * (h_ // 2) * (w_ // 2):
            raise ValueError(f"allocation levels hold {len(flat)} blocks, grid {grid} needs {f_ * (h_ // 2) * (w_ // 2)}")
        levels = torch.tensor(flat, dtype=torch.int8).view(f_, h_ // 2, w_ // 2)
        detail = None
        if "detail" in data:
            bits = [c == "1" for frame in data["detail"] for row in frame for c in row]
            if len(bits) != len(flat):
                raise ValueError(f"allocation detail holds {len(bits)} blocks, grid {grid} needs {len(flat)}")
            detail = torch.tensor(bits, dtype=torch.bool).view(f_, h_ // 2, w_ // 2)
        return cls(grid, levels, dict(data.get("info", {})), detail)  # type: ignore[arg-type]

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Allocation) and self.grid == other.grid and torch.equal(self.levels, other.levels)
                and torch.equal(self.detail, other.detail))


def cell_token_index(table: TokenTable, grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cell -> token sequence position, cell -> sub-cell quad (dh*2+dw, or -1 for fine)), both (F'H'W',)."""
    f_, h_, w_ = grid
    n_cells = f_ * h_ * w_
    token = torch.full((n_cells,), -1, dtype=torch.int64)
    quad = torch.full((n_cells,), -1, dtype=torch.int64)
    seq = torch.arange(len(table))
    for kind in (FINE, SPATIAL, SPATIOTEMPORAL):
        sel = table.kind == kind
        if not sel.any():
            continue
        f0, h0, w0 = table.f[sel], table.h[sel], table.w[sel]
        nf, nh, nw = (int(x[sel][0]) for x in (table.nf, table.nh, table.nw))
        for df in range(nf):
            for dh in range(nh):
                for dw in range(nw):
                    cells = ((f0 + df) * h_ + h0 + dh) * w_ + w0 + dw
                    token[cells] = seq[sel]
                    if kind != FINE:
                        quad[cells] = dh * 2 + dw
    return token, quad


# ---------------------------------------------------------------- choosing an allocation
def _finite_or_inf(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=INF, posinf=INF)


def block_scores(complexity: Complexity) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(spatial (F', H'//2, W'//2), temporal (P, H'//2, W'//2), spatial against the reference
    frame (F', H'//2, W'//2) or None) scores, max over the batch (a region is coarsened only
    where every sample of the batch is simple)."""
    sp = complexity.spatial.float().amax(dim=0)
    tp = complexity.temporal.float().amax(dim=0)
    f_, h_, w_ = sp.shape
    bh, bw = h_ // 2, w_ // 2

    def blocks(x: torch.Tensor) -> torch.Tensor:
        x = x[:, : 2 * bh, : 2 * bw].reshape(x.shape[0], bh, 2, bw, 2)
        return x.amax(dim=(2, 4))

    s_blk = blocks(sp)
    pairs = temporal_pairs(f_)
    if pairs:
        firsts = torch.tensor([a for a, _ in pairs])
        t_blk = torch.maximum(blocks(tp[firsts]), blocks(tp[firsts + 1]))
    else:
        t_blk = torch.zeros(0, bh, bw)
    r_blk = None
    if complexity.spatial_ref is not None:
        r_blk = _finite_or_inf(blocks(complexity.spatial_ref.float().amax(dim=0)))
    return _finite_or_inf(s_blk), _finite_or_inf(t_blk), r_blk


def _pair_spatial(s_blk: torch.Tensor, firsts: torch.Tensor) -> torch.Tensor:
    """A temporal pair's spatial score: the larger of its two frames' (a spatio-temporal move's key
    is the max of this and the weighted temporal score)."""
    return torch.maximum(s_blk[firsts], s_blk[firsts + 1])


def allocate_from_complexity(
    complexity: Complexity,
    rho: float | None = None,
    thresholds: tuple[float, float] | None = None,
    temporal_weight: float = 1.0,
) -> Allocation:
    """The allocation for complexity maps from `region_complexity` or `latent_complexity`.

    Give exactly one of `rho` (keep ratio in (0, 1]: tokens ~= rho * F'H'W', within 3 tokens;
    below the coarsest possible partition it returns that one) or `thresholds` = (spatial,
    temporal) in the complexity's units (luma 0..255 for pixel complexity). A batch (B > 1)
    gets one shared partition from the max over its samples."""
    if (rho is None) == (thresholds is None):
        raise ValueError("give exactly one of rho (keep ratio) or thresholds (spatial, temporal)")
    plain_s, t_blk, ref_s = block_scores(complexity)
    f_, h_, w_ = complexity.grid
    grid = (f_, h_, w_)
    pairs = temporal_pairs(f_)
    firsts = torch.tensor([a for a, _ in pairs], dtype=torch.long)
    t_key = t_blk * temporal_weight
    pair_s = _pair_spatial(plain_s, firsts) if pairs else torch.zeros(t_key.shape)
    s_blk, s_detail, st_detail = plain_s, torch.zeros(plain_s.shape, dtype=torch.bool), torch.zeros(t_key.shape, dtype=torch.bool)
    if ref_s is not None:  # each token takes the cheaper unpack: pooled alone, or + the reference's detail
        s_detail = ref_s < plain_s
        s_blk = torch.minimum(plain_s, ref_s)
        if pairs:
            ref_pair = _pair_spatial(ref_s, firsts)
            st_detail = ref_pair < pair_s
            pair_s = torch.minimum(pair_s, ref_pair)
    st_key = torch.maximum(t_key, pair_s)
    levels = torch.zeros(s_blk.shape, dtype=torch.int8)

    def with_detail(levels: torch.Tensor) -> torch.Tensor:
        detail = s_detail & (levels == SPATIAL)
        for i, (a, b) in enumerate(pairs):
            merged = levels[a] == SPATIOTEMPORAL
            detail[a][merged] = detail[b][merged] = st_detail[i][merged]
        return detail

    if thresholds is not None:
        s_thr, t_thr = (float(x) for x in thresholds)
        levels[s_blk < s_thr] = SPATIAL
        if pairs:
            merge = (levels[firsts] == SPATIAL) & (levels[firsts + 1] == SPATIAL) & (t_key < t_thr) & (pair_s < s_thr)
            for i, (a, b) in enumerate(pairs):
                levels[a][merge[i]] = SPATIOTEMPORAL
                levels[b][merge[i]] = SPATIOTEMPORAL
        info = {"mode": "thresholds", "thresholds": [s_thr, t_thr], "temporal_weight": temporal_weight}
        return Allocation(grid, levels, info, with_detail(levels))

    rho = float(rho)  # type: ignore[arg-type]
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho={rho} must be in (0, 1]")
    uniform = f_ * h_ * w_
    target = round(rho * uniform)
    keys = torch.cat([s_blk.flatten(), st_key.flatten()])
    saves = torch.cat([torch.full((s_blk.numel(),), 3), torch.full((st_key.numel(),), 1)])
    order = torch.sort(keys, stable=True).indices
    order = order[torch.isfinite(keys[order])]  # an infinite score (unknown, e.g. motion) never coarsens
    tokens_after = uniform - torch.cumsum(saves[order], 0)
    tokens_after = torch.cat([torch.tensor([uniform]), tokens_after])  # prefix length k -> tokens
    k = int(torch.argmin((tokens_after - target).abs()))  # first minimum: fewer moves on a tie
    chosen = order[:k]
    sp_moves = chosen[chosen < s_blk.numel()]
    st_moves = chosen[chosen >= s_blk.numel()] - s_blk.numel()
    levels.view(-1)[sp_moves] = SPATIAL
    if len(st_moves):
        nb = s_blk.shape[1] * s_blk.shape[2]
        pair_idx, rest = st_moves // nb, st_moves % nb
        for off in (0, 1):
            frame = firsts[pair_idx] + off
            levels.view(f_, -1)[frame, rest] = SPATIOTEMPORAL
    info = {"mode": "rho", "rho": rho, "target_tokens": target, "temporal_weight": temporal_weight}
    return Allocation(grid, levels, info, with_detail(levels))
