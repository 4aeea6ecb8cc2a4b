"""A PNG of an allocation drawn over the clip, for reports and a glance at what CAT coarsened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from cat.allocation import SPATIAL, SPATIOTEMPORAL, Allocation
from cat.api import detail_tokens
from cat.complexity import frames_of_latent
from core.io import atomic_path
from core.models import Geometry

# Tint per token kind (fine tokens are left untinted): blue = coarse spatial, orange = coarse
# spatio-temporal; coarse tokens that restore the reference frame's sub-token detail (reference
# detail, `Allocation.detail`): green = spatial, magenta = spatio-temporal.
TINT = {SPATIAL: (40, 110, 255), SPATIOTEMPORAL: (255, 140, 0)}
DETAIL_TINT = {SPATIAL: (0, 200, 90), SPATIOTEMPORAL: (230, 40, 200)}


def _frames_uint8(frames: torch.Tensor | np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 from (3, T, H, W) / (1, 3, T, H, W) in [-1, 1] or uint8, or (T, H, W, 3) uint8."""
    if isinstance(frames, torch.Tensor):
        x = frames.detach().cpu()
        if x.ndim == 5:
            x = x[0]
        if x.shape[0] != 3:
            raise ValueError(f"expected (3, T, H, W) frames, got {tuple(x.shape)}")
        if x.dtype != torch.uint8:
            x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(1, 2, 3, 0).numpy()
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (T, H, W, 3) frames, got {arr.shape}")
    return arr.astype(np.uint8)


def draw_allocation(
    frames: torch.Tensor | np.ndarray,
    allocation: Allocation,
    path: str | Path,
    max_width: int = 480,
    columns: int = 3,
    geometry: Geometry | None = None,
) -> Path:
    """Write a PNG sheet: one panel per latent frame (its last pixel frame), coarse tokens tinted
    (blue spatial, orange spatio-temporal; those restoring the reference frame's detail green
    spatial, magenta spatio-temporal), token borders drawn, a caption with the counts.
    Written atomically (temp file, then rename). `geometry`: the model family's (None = default)."""
    video = _frames_uint8(frames)
    f_, h_, w_ = allocation.grid
    cells = allocation.cell_levels().numpy()
    detail = allocation.cell_detail().numpy()
    token = allocation.token_of_cell().numpy()
    panels = []
    for f in range(f_):
        t = min(frames_of_latent(f, geometry).stop - 1, len(video) - 1)
        img = video[t].astype(np.float32)
        ch, cw = img.shape[0] / h_, img.shape[1] / w_
        rows = (np.arange(img.shape[0]) / ch).astype(int).clip(0, h_ - 1)
        cols = (np.arange(img.shape[1]) / cw).astype(int).clip(0, w_ - 1)
        lv = cells[f][rows][:, cols]
        dt = detail[f][rows][:, cols]
        for kind in TINT:
            for tint, mask in ((TINT[kind], (lv == kind) & ~dt), (DETAIL_TINT[kind], (lv == kind) & dt)):
                img[mask] = 0.55 * img[mask] + 0.45 * np.array(tint, dtype=np.float32)
        tok = token[f][rows][:, cols]
        edge = np.zeros(tok.shape, dtype=bool)
        edge[1:, :] |= tok[1:, :] != tok[:-1, :]
        edge[:, 1:] |= tok[:, 1:] != tok[:, :-1]
        img[edge] = 255.0
        panel = Image.fromarray(img.clip(0, 255).astype(np.uint8))
        if panel.width > max_width:
            panel = panel.resize((max_width, max(1, round(panel.height * max_width / panel.width))), Image.NEAREST)
        ImageDraw.Draw(panel).text((3, 2), f"latent frame {f}", fill=(255, 255, 0))
        panels.append(panel)
    pw, ph = panels[0].size
    cols_n = min(columns, len(panels))
    rows_n = -(-len(panels) // cols_n)
    caption_h = 16
    sheet = Image.new("RGB", (cols_n * pw, rows_n * ph + caption_h), (0, 0, 0))
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols_n)
        sheet.paste(panel, (c * pw, r * ph))
    counts = allocation.counts()
    caption = (
        f"tokens {allocation.num_tokens}/{allocation.uniform_tokens} ({allocation.keep_ratio:.2f})  fine {counts['fine']}"
        f"  spatial(blue) {counts['spatial']}  spatio-temporal(orange) {counts['spatiotemporal']}"
    )
    if allocation.uses_reference:
        caption += f"  of them reference detail(green/magenta) {detail_tokens(allocation)}"
    ImageDraw.Draw(sheet).text((3, rows_n * ph + 2), caption, fill=(255, 255, 255))
    path = Path(path)
    with atomic_path(path) as tmp:
        sheet.save(tmp)
    return path
