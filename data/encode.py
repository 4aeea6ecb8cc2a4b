"""What training needs from each window, computed once: model encodings and model-free complexity.

Model encodings go through the model family (core.models); complexity through cat.complexity
(the same statistic stage 2 allocates CAT tokens from), so data/ holds no model or SI/TI maths.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cat.complexity import clip_si_ti, region_complexity
from core.models import Components, Geometry, encode_condition, encode_image, encode_prompt, encode_video
from core.schema import ModelConfig
from data.buckets import to_model_range


def expected_model_id(cfg: ModelConfig) -> str:
    """The id `core.models.load_components` will report, known without loading weights (cache paths
    are checked before deciding whether the model is needed at all); a test keeps the two equal."""
    if cfg.model_id:
        return cfg.model_id
    return Path(cfg.path).expanduser().name if cfg.path else f"tiny-seed{cfg.seed}"


@torch.no_grad()
def analyse(video: torch.Tensor, geometry: Geometry) -> dict[str, torch.Tensor]:
    """Model-free statistics of one window (3, T, H, W) uint8: `complexity` (2, F', H', W') =
    stack(spatial, temporal) per patch-grid cell of the family's `geometry`, and `si_ti` (2,) =
    P.910 SI and TI."""
    batch = video.unsqueeze(0)
    si, ti = clip_si_ti(batch)
    maps = region_complexity(batch, geometry.patch_grid(*video.shape[1:]), geometry=geometry)
    return {
        "complexity": torch.stack([maps.spatial[0], maps.temporal[0]]).float(),
        "si_ti": torch.stack([si[0], ti[0]]).float(),
    }


@torch.no_grad()
def encode_windows(comp: Components, videos: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Latents, I2V condition and CLIP image embeddings of same-size windows (B, 3, T, H, W) uint8."""
    pixels = to_model_range(videos)
    num_frames = pixels.shape[2]
    latents = encode_video(comp, pixels).float().cpu()
    condition = encode_condition(comp, pixels[:, :, 0], num_frames).float().cpu()
    first_frames = [frame for frame in videos[:, :, 0].permute(0, 2, 3, 1).numpy()]
    image_embeds = encode_image(comp, first_frames).float().cpu()
    return [
        {"latents": latents[i], "condition": condition[i], "image_embeds": image_embeds[i]}
        for i in range(videos.shape[0])
    ]


@torch.no_grad()
def encode_caption(comp: Components, caption: str) -> torch.Tensor:
    """(512, text_dim) UMT5 embeddings of one caption."""
    return encode_prompt(comp, [caption])[0].float().cpu()
