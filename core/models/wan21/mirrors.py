"""The diffusers code this folder mirrors, pinned by a hash of its source.

CAT and sequence parallelism cannot call `WanTransformer3DModel.forward` whole, so pieces of it
(and of the attention processor, the rotary embedding and the I2V pipeline's conditioning) are
re-stated here. diffusers marks such copies `# Copied from` and checks them with a script; this
table is our check: `changed_mirrors()` hashes the installed diffusers' source of each mirrored
function and names, for every one that differs, the module here to re-check against it.
tests/test_model_guard.py fails on any."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

MIRRORED_VERSION = "0.42.1"  # the diffusers version every hash below was recorded against


@dataclass(frozen=True)
class Mirror:
    source: str  # "module:Qualified.name" in diffusers
    sha256: str  # of inspect.getsource at MIRRORED_VERSION
    mirror: str  # what in core/models/wan21 re-states it


MIRRORS = (
    Mirror(
        "diffusers.models.transformers.transformer_wan:WanTransformer3DModel.forward",
        "9f81a7225288656f1fa424fbd502206d5d242bad2bda9e11e2571eb5bf25ed30",
        "core/models/wan21/forward.py (stock_tokens, embed_conditions, run_blocks, project_out) "
        "and cat/forward.py unpack's unpatchify order",
    ),
    Mirror(
        "diffusers.models.transformers.transformer_wan:WanAttnProcessor.__call__",
        "13c09feedcfe814ab506ebde0fec952f7afddd08e3260f73872b8d237cb0f612",
        "core/models/wan21/attention.py (attention_qkv, apply_rotary, attention_out)",
    ),
    Mirror(
        "diffusers.models.transformers.transformer_wan:WanRotaryPosEmbed.forward",
        "863fb1c601f5756a890344c77a159a1531067dd876aa905cc7d0cbe1a5127c01",
        "core/models/wan21/rope.py (rope_at: table layout and dtype)",
    ),
    Mirror(
        "diffusers.models.transformers.transformer_wan:WanRotaryPosEmbed.__init__",
        "51d451ef596b482fe66252512a306b87f926c57931bd5cf8940301f24392a5a4",
        "core/models/wan21/rope.py (axis_dims: the t/h/w split, ROPE_THETA)",
    ),
    Mirror(
        "diffusers.models.embeddings:get_1d_rotary_pos_embed",
        "0734204c538630d0ea99be01231bdcd3cf806a5970b9c6fca2da11a50ddbdfdf",
        "core/models/wan21/rope.py (_axis_tables: the per-axis frequency formula)",
    ),
    Mirror(
        "diffusers.pipelines.wan.pipeline_wan_i2v:WanImageToVideoPipeline._get_t5_prompt_embeds",
        "e0d07ec1a69a50a600300d67a2393c0cd7820b31079025dcbe557fcb9c8084aa",
        "core/models/wan21/conditioning.py (encode_prompt)",
    ),
    Mirror(
        "diffusers.pipelines.wan.pipeline_wan_i2v:WanImageToVideoPipeline.encode_image",
        "675683edb6268d6652f11afb06bda3b9c3772599ab67a8867f1e53d6dafad506",
        "core/models/wan21/conditioning.py (encode_image)",
    ),
    Mirror(
        "diffusers.pipelines.wan.pipeline_wan_i2v:WanImageToVideoPipeline.prepare_latents",
        "1dd276939a11065e52837f8424aec6f48f8c119487d9bb855f74796d36a45a74",
        "core/models/wan21/conditioning.py (encode_condition, model_input)",
    ),
)


def resolve(source: str) -> Callable:
    module, _, qualname = source.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def source_hash(obj: Callable) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()


def changed_mirrors(mirrors: tuple[Mirror, ...] = MIRRORS) -> list[str]:
    """One line per mirrored diffusers function whose installed source differs from the recorded one."""
    import diffusers

    lines = []
    for m in mirrors:
        try:
            digest = source_hash(resolve(m.source))
        except (AttributeError, ImportError, OSError, TypeError) as exc:
            digest = f"unreadable ({type(exc).__name__})"
        if digest != m.sha256:
            lines.append(
                f"installed diffusers {diffusers.__version__}: {m.source} differs from the source mirrored from "
                f"diffusers {MIRRORED_VERSION}; re-check {m.mirror} against it, then record its new hash in "
                f"core/models/wan21/mirrors.py"
            )
    return lines
