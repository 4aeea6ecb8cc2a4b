"""What training needs from each window, computed once: model encodings and model-free complexity.

Model encodings go through the model family (core.models); complexity through cat.complexity
(the same statistic stage 2 allocates CAT tokens from), so data/ holds no model or SI/TI maths.
"""

from __future__ import annotations

import torch

from cat.complexity import clip_si_ti, region_complexity
from core.models import Components, Geometry, encode_condition, encode_image, encode_prompt, encode_video, get_family
from core.schema import ModelConfig
from data.buckets import to_model_range


def expected_model_id(cfg: ModelConfig) -> str:
    """The id `core.models.load_components` will report, known without loading weights (cache paths
    are checked before deciding whether the model is needed at all); a test keeps the two equal."""
    return get_family(cfg.family).model_id(cfg)


@torch.no_grad()
def analyse(video: torch.Tensor, geometry: Geometry, reference: bool = False) -> dict[str, torch.Tensor]:
    """Model-free statistics of one window (3, T, H, W) uint8: `complexity` (2 or 3, F', H', W') =
    stack(spatial, temporal[, spatial_ref]) per patch-grid cell of the family's `geometry`, and
    `si_ti` (2,) = P.910 SI and TI. `reference=True` (the window is image-conditioned: its frame 0
    is the model's given first frame, `ModelFamily.image_conditioned`) adds the third map, the
    spatial statistic against frame 0 that CAT's reference detail allocates from."""
    batch = video.unsqueeze(0)
    si, ti = clip_si_ti(batch)
    grid = geometry.patch_grid(*video.shape[1:])
    maps = region_complexity(batch, grid, geometry=geometry, reference=reference)
    rows = [maps.spatial[0], maps.temporal[0]] + ([maps.spatial_ref[0]] if reference else [])
    return {"complexity": torch.stack(rows).float(), "si_ti": torch.stack([si[0], ti[0]]).float()}


@torch.no_grad()
def encode_windows(comp: Components, videos: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Latents, I2V condition and CLIP image embeddings of same-size windows (B, 3, T, H, W) uint8."""
    pixels = to_model_range(videos)
    num_frames = pixels.shape[2]
    latents = encode_video(comp, pixels).float().cpu()
    condition = encode_condition(comp, pixels[:, :, 0], num_frames).float().cpu()
    first_frames = [frame for frame in videos[:, :, 0].permute(0, 2, 3, 1).numpy()]
    image_embeds = encode_image(comp, first_frames)  # None: the family has no image encoder (stored empty)
    image_embeds = torch.zeros(len(first_frames), 0) if image_embeds is None else image_embeds.float().cpu()
    return [
        {"latents": latents[i], "condition": condition[i], "image_embeds": image_embeds[i]}
        for i in range(videos.shape[0])
    ]


@torch.no_grad()
def encode_caption(comp: Components, caption: str) -> torch.Tensor:
    """(text_tokens, text_dim) text-encoder embeddings of one caption (the family's encode_prompt)."""
    return encode_prompt(comp, [caption])[0].float().cpu()
