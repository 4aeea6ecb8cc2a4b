"""The Wan2.1 I2V-14B transformer shape with a few blocks built, and how `make bench-gpu` measures it.

Figures are measured with 1 block and with N built blocks; `extrapolate` turns the two into
40-layer figures (linear in the block count), which are labelled `*_40_extrapolated`.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

import core  # noqa: F401  (offline environment first)
from cat.allocation import allocate_from_complexity
from cat.complexity import Complexity
from cat.forward import cat_forward
from cat.tokenizer import Layout, build_layout
from core.models.wan21 import FAMILY, REAL_TRANSFORMER, TEXT_TOKENS, patch_grid

WAN14B_I2V = REAL_TRANSFORMER  # the Wan2.1 family's 14B transformer config (core/models/wan21/loading.py)
REAL_LAYERS = WAN14B_I2V["num_layers"]
IMAGE_TOKENS = FAMILY.cost_dims["context_tokens"] - TEXT_TOKENS  # 257: CLIP ViT-H/14 states of one 224 px image
SHAPES = {"480p x 33": (33, 480, 832), "720p x 81": (81, 720, 1280), "720p x 33": (33, 720, 1280)}


def build_model(
    num_layers: int, device: str | torch.device, dtype: torch.dtype, config: dict | None = None, seed: int = 0
) -> Any:
    """The 14B-shaped transformer with `num_layers` blocks and random weights, materialised on `device`.

    Parameters are created empty and filled from one seeded random pattern (a prime-length block
    repeated, scaled by 1/sqrt(fan_in)): a default init of 0.5 B parameters takes ~20 s on one
    CPU thread, the fill under 2 s. Norm weights are 1, biases small; buffers (RoPE) are built normally."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights(include_buffers=False):
        model = WanTransformer3DModel(**{**(config or WAN14B_I2V), "num_layers": num_layers})
    pattern = torch.randn(1_000_003, generator=torch.Generator().manual_seed(seed)).to(device)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            values = torch.empty(param.shape, device=device, dtype=torch.float32)
            flat = values.view(-1)
            for start in range(0, flat.numel(), pattern.numel()):
                chunk = flat[start : start + pattern.numel()]
                chunk.copy_(pattern[: chunk.numel()])
            if param.ndim == 1 and "norm" in type(module).__name__.lower() + name:
                values.fill_(1.0)
            elif param.ndim == 1:
                values.mul_(0.01)
            else:
                values.mul_(param.shape[-1] ** -0.5 if param.ndim == 2 else param[0].numel() ** -0.5)
            module._parameters[name] = torch.nn.Parameter(values.to(dtype), requires_grad=False)
    model.rope.to(device)
    return model.to(device, dtype).requires_grad_(False).eval()


def make_inputs(
    model: Any, shape: tuple[int, int, int], device: str | torch.device, dtype: torch.dtype, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random inputs of a (frames, height, width) pixel clip: latent, timestep, 512 text + 257 image tokens."""
    frames, height, width = shape
    f, h, w = patch_grid(frames, height, width)
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    return {
        "hidden_states": torch.randn(1, cfg.in_channels, f, 2 * h, 2 * w, generator=g).to(device, dtype),
        "timestep": torch.tensor([700.0], device=device),
        "encoder_hidden_states": torch.randn(1, TEXT_TOKENS, cfg.text_dim, generator=g).to(device, dtype),
        "encoder_hidden_states_image": torch.randn(1, IMAGE_TOKENS, cfg.image_dim, generator=g).to(device, dtype),
    }


def layout_for(shape: tuple[int, int, int], rho: float, device: str | torch.device = "cpu", seed: int = 1) -> Layout:
    """A CAT layout at keep ratio `rho` from random complexity maps (the speed depends on the count only),
    built once on `device` and reused across calls as a pipeline does across denoising steps."""
    grid = patch_grid(*shape)
    g = torch.Generator().manual_seed(seed)
    maps = Complexity(torch.rand(1, *grid, generator=g) * 100, torch.rand(1, *grid, generator=g) * 50)
    return build_layout(allocate_from_complexity(maps, rho=rho)).to(device)


def forward(model: Any, inputs: dict[str, torch.Tensor], layout: Layout | None = None) -> torch.Tensor:
    """Stock diffusers forward (layout None) or `cat_forward` with the layout's tokens."""
    if layout is None:
        return model(**inputs, return_dict=False)[0]
    return cat_forward(
        model,
        inputs["hidden_states"],
        inputs["timestep"],
        inputs["encoder_hidden_states"],
        inputs["encoder_hidden_states_image"],
        allocation=layout,
    )


@contextlib.contextmanager
def only_blocks(model: Any, count: int) -> Iterator[None]:
    """Run the model with its first `count` blocks only."""
    full = model.blocks
    model.blocks = torch.nn.ModuleList(list(full)[:count])
    try:
        yield
    finally:
        model.blocks = full


def measure(fn: Callable[[], Any], device: torch.device, repeats: int) -> tuple[float, float | None]:
    """(median seconds over `repeats` after one warm-up call, peak GiB allocated during them; None on CPU)."""
    cuda = device.type == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return statistics.median(times), peak


def extrapolate(one: tuple[float, float | None], built: tuple[float, float | None], layers: int) -> dict[str, Any]:
    """40-layer figures from measurements with 1 block and with `layers` blocks (linear in the block count)."""
    per_block = (built[0] - one[0]) / (layers - 1)
    out: dict[str, Any] = {
        "layers_built": layers,
        "s_measured": round(built[0], 4),
        "s_per_layer": round(per_block, 4),
        "s_40_extrapolated": round(one[0] + (REAL_LAYERS - 1) * per_block, 3),
    }
    if built[1] is not None and one[1] is not None:
        per_gib = (built[1] - one[1]) / (layers - 1)
        out.update(
            peak_gib_measured=round(built[1], 2),
            peak_gib_per_layer=round(per_gib, 3),
            peak_gib_40_extrapolated=round(one[1] + (REAL_LAYERS - 1) * per_gib, 2),
        )
    return out


def two_point(model: Any, fn: Callable[[], Any], device: torch.device, layers: int, repeats: int) -> dict[str, Any]:
    with only_blocks(model, 1):
        one = measure(fn, device, repeats)
    with only_blocks(model, layers):
        built = measure(fn, device, repeats)
    return extrapolate(one, built, layers)
