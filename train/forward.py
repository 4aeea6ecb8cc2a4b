"""The module accelerate wraps: the transformer plus the stage's token policy.

DDP and DeepSpeed only see calls made through the wrapped module's `forward`, so the choice
between Wan's stock patchify and CAT tokens lives inside this module, not around it. The
policy is the one inference uses (`cat.UniformPolicy` / `cat.CatPolicy`).
"""

from __future__ import annotations

import torch

from cat.policy import TokenPolicy, UniformPolicy, check_policy
from core.models import family_of

TOKENIZATIONS = ("stock", "cat")  # what a StageSpec declares; `stage_policy` turns it into a TokenPolicy


def stage_policy(tokenization: str, rho: float) -> TokenPolicy:
    """A stage's declared tokenization ("stock" | "cat") with its keep ratio, as a token policy."""
    from cat.policy import CatPolicy

    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization '{tokenization}' is not one of {TOKENIZATIONS}")
    return CatPolicy(rho=rho) if tokenization == "cat" else UniformPolicy()


def uniform_tokens(latents_shape: torch.Size | tuple[int, ...], patch: tuple[int, int, int]) -> int:
    """Tokens per sample of the stock patchify (`patch`: the family's) for latents (B, C, F, H, W)."""
    f, h, w = latents_shape[-3:]
    return (f // patch[0]) * (h // patch[1]) * (w // patch[2])


def token_shares(allocation: object | None) -> tuple[float, float]:
    """(coarse, detail) tokens as shares of a call's tokens: coarse tokens (spatial or spatio-temporal)
    and those of them that restore the reference frame's detail; (0, 0) on stock tokens."""
    if allocation is None:
        return 0.0, 0.0
    from cat.api import detail_tokens

    counts = allocation.counts()
    coarse = counts["spatial"] + counts["spatiotemporal"]
    total = max(1, allocation.num_tokens)
    return coarse / total, detail_tokens(allocation) / total


def complexity_maps(complexity: torch.Tensor, reference_given: bool) -> object:
    """`cat.Complexity` of a batch of cached maps (B, 2|3, F', H', W'): the third map (spatial_ref,
    data.encode) is used only when the model input carries the conditioning image's latent, which
    a detail-flagged token restores at inference (`ModelFamily.reference_latent`)."""
    import cat

    ref = complexity[:, 2].float() if complexity.shape[1] > 2 and reference_given else None
    return cat.Complexity(spatial=complexity[:, 0].float(), temporal=complexity[:, 1].float(), spatial_ref=ref)


class Denoiser(torch.nn.Module):
    """Wan transformer forward with the policy's tokens: stock, or CAT from the windows' per-cell
    complexity (the keep ratio of a call: `rho`, else the policy's). With the reference map
    (image-conditioned windows) the allocation may flag coarse tokens for reference detail; the
    loss does not change with those flags (the detail term is part of the correction, left out of
    prediction and target alike: docs/train.md), only which regions are coarse does."""

    def __init__(self, transformer: torch.nn.Module, policy: TokenPolicy = UniformPolicy()):
        super().__init__()
        self.transformer = transformer
        self.policy = check_policy(policy, "Denoiser")
        self.last_tokens = 0  # tokens per sample of the latest call (throughput logging)
        self.last_layout = None  # the CAT layout of the latest call (None: stock tokens), for `flow_target`
        self.last_allocation = None  # its allocation (token shares for the step metrics)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, complexity: torch.Tensor | None = None,
                rho: float | None = None) -> torch.Tensor:
        family = family_of(self.transformer)
        uniform = uniform_tokens(hidden_states.shape, family.geometry.patch)
        dtype = self.transformer.patch_embedding.weight.dtype  # a bf16 base is fed bf16 even without autocast
        hidden_states, encoder_hidden_states = hidden_states.to(dtype), encoder_hidden_states.to(dtype)
        if encoder_hidden_states_image is not None and encoder_hidden_states_image.numel() == 0:
            encoder_hidden_states_image = None  # cached empty: the family has no image encoder (data.encode)
        if encoder_hidden_states_image is not None:
            encoder_hidden_states_image = encoder_hidden_states_image.to(dtype)
        if not self.policy.runs_stock(rho):
            import cat

            if complexity is None:
                raise ValueError("CAT tokenization needs the windows' complexity maps (data cache field 'complexity')")
            reference_given = complexity.shape[1] > 2 and family.reference_latent(hidden_states) is not None
            allocation = self.policy.from_complexity(complexity_maps(complexity, reference_given), rho)
            self.last_allocation = allocation
            self.last_tokens = allocation.num_tokens
            self.last_layout = cat.build_layout(allocation).to(hidden_states.device)
            # The coarse-cell correction (its reference-detail term too) has no parameters and sits
            # in the prediction and in the target alike (train.objective.flow_target): it is left
            # out of both, which gives the same loss without cancelling a large R(x0)/sigma term in
            # bf16 (docs/cat.md).
            return cat.cat_forward(self.transformer, hidden_states, timestep, encoder_hidden_states,
                                   encoder_hidden_states_image=encoder_hidden_states_image,
                                   allocation=self.last_layout, correct=False)
        self.last_tokens = uniform
        self.last_layout = self.last_allocation = None
        return self.transformer(hidden_states=hidden_states, timestep=timestep,
                                encoder_hidden_states=encoder_hidden_states,
                                encoder_hidden_states_image=encoder_hidden_states_image, return_dict=False)[0]
