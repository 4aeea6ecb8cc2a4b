"""DeepSpeed at inference: ZeRO-Inference on one GPU, Ulysses sequence parallel and data parallel on several.

Sequence parallel works on whatever token sequence reaches the transformer blocks, uniform or a
mixed CAT sequence, because it hooks the blocks rather than the model's edges: a pre-hook on the
first block pads the (B, S, D) sequence to a multiple of the world size and keeps this rank's
slice (rotary tables likewise, every block), each self-attention runs through DeepSpeed-Ulysses
``DistributedAttention`` (all-to-all from sequence shards to head shards and back), and a hook on
the last block gathers the full sequence again. The padding keys are masked inside attention,
so the result equals the single-process forward to float precision. Cross-attention, the FFN
and the norms are per token and need no communication.

Launch: ``deepspeed --num_gpus N --module infer.ab ...`` or ``torchrun --nproc_per_node N -m infer.ab ...``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from core.models import ModelFamily, family_of


# ---------------------------------------------------------------- process groups
@dataclass
class ParallelContext:
    """Where this process sits: world, its sequence-parallel group and its data-parallel slot."""

    rank: int = 0
    world_size: int = 1
    sp_size: int = 1
    sp_group: Any = None  # torch ProcessGroup of this rank's sequence-parallel peers (None when sp_size == 1)
    dp_rank: int = 0
    dp_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_distributed() -> bool:
    """True under torchrun / the deepspeed launcher (they set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_parallel(sp_size: int | None = None, device: torch.device | None = None) -> ParallelContext:
    """Initialise DeepSpeed's communication (gloo on CPU, nccl on GPU) and split ranks into
    sequence-parallel groups of `sp_size` consecutive ranks; the groups are data parallel."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ParallelContext(device=device or torch.device("cpu"))
    import deepspeed
    import torch.distributed as tdist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or device.type == "cuda":
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    rank, world = tdist.get_rank(), tdist.get_world_size()
    sp = world if sp_size is None else sp_size
    if sp < 1 or world % sp:
        raise ValueError(f"sequence-parallel size {sp} must divide the world size {world}")
    group = None
    for start in range(0, world, sp):  # every rank must create every group, in the same order
        ranks = list(range(start, start + sp))
        made = tdist.new_group(ranks) if sp > 1 else None
        if rank in ranks:
            group = made
    return ParallelContext(rank, world, sp, group, rank // sp, world // sp, device)


def shard_items(items: Sequence[Any], ctx: ParallelContext) -> list[Any]:
    """This data-parallel slot's share of the benchmark clips (round robin)."""
    return list(items[ctx.dp_rank :: ctx.dp_size])


def gather_json(obj: Any, ctx: ParallelContext) -> list[Any]:
    """Every rank's JSON-serialisable `obj`, in rank order (JSON bytes, never pickle)."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as tdist

    comm_device = ctx.device if tdist.get_backend() == "nccl" else torch.device("cpu")
    payload = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=comm_device)
    size = torch.tensor([payload.numel()], dtype=torch.long, device=comm_device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    tdist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=comm_device)
    padded[: payload.numel()] = payload
    chunks = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    tdist.all_gather(chunks, padded)
    return [json.loads(bytes(c[: int(s.item())].cpu().tolist()).decode()) for c, s in zip(chunks, sizes, strict=True)]


# ---------------------------------------------------------------- Ulysses sequence parallel
@dataclass
class _SeqState:
    full_len: int = 0  # unpadded global sequence length of the current forward
    padded_len: int = 0
    rotary_cache: dict = field(default_factory=dict)


class UlyssesSelfAttention:
    """Self-attention processor whose attention core is DeepSpeed-Ulysses `DistributedAttention`.

    The family's projections, QK-norm and rotary (`attention_qkv`) run on the local sequence
    shard; the all-to-all then gives each rank the whole sequence for heads/P heads.
    """

    def __init__(self, group: Any, state: _SeqState, family: ModelFamily) -> None:
        from deepspeed.sequence.layer import DistributedAttention

        self.family = family
        self.state = state
        self.attention = DistributedAttention(self._local_attention, group, scatter_idx=2, gather_idx=1)

    def _local_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (B, S_pad, H/P, D): the full padded sequence for this rank's heads; mask the padding keys.
        mask = None
        if self.state.full_len < q.shape[1]:
            mask = (torch.arange(k.shape[1], device=k.device) < self.state.full_len).view(1, 1, 1, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return out.transpose(1, 2)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("UlyssesSelfAttention serves self-attention only (attn1), without a mask")
        query, key, value = self.family.attention_qkv(attn, hidden_states, rotary_emb)
        out = self.attention(query, key, value, 0).flatten(2, 3).type_as(query)
        return self.family.attention_out(attn, out)


def check_heads(heads: int, world: int) -> None:
    """Ulysses gives each rank heads/P whole heads: P must divide the head count."""
    if heads % world:
        raise ValueError(
            f"Ulysses sequence parallel needs the attention heads ({heads}) to divide by the sequence-parallel "
            f"size ({world}); use a size among {[d for d in range(1, heads + 1) if heads % d == 0]}"
        )


class SequenceParallel(contextlib.AbstractContextManager):
    """While active, every forward of `transformer`'s blocks is split over the ranks of `group`.

    Works for the stock forward and for `cat.cat_forward` alike: both run the family's blocks in
    order on a (B, S, D) sequence with per-token rotary tables.
    """

    def __init__(self, transformer: Any, group: Any) -> None:
        import torch.distributed as tdist

        self.family = family_of(transformer)
        self.transformer = transformer
        self.group = group
        self.world = tdist.get_world_size(group)
        self.rank = tdist.get_rank(group)
        check_heads(self.family.num_heads(transformer), self.world)
        self.state = _SeqState()
        self._handles: list[Any] = []
        self._processors: list[Any] = []

    # -- sharding helpers
    def _shard(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        pad = self.state.padded_len - x.shape[dim]
        if pad:
            shape = list(x.shape)
            shape[dim] = pad
            x = torch.cat([x, x.new_zeros(shape)], dim=dim)
        local = self.state.padded_len // self.world
        return x.narrow(dim, self.rank * local, local).contiguous()

    def _shard_rotary(self, rotary: Any) -> Any:
        if rotary is None:
            return None
        cos, sin = rotary
        if cos.shape[1] != self.state.full_len:
            return rotary  # already local
        key = (id(cos), id(sin))
        if key not in self.state.rotary_cache:
            self.state.rotary_cache = {key: (self._shard(cos), self._shard(sin))}
        return self.state.rotary_cache[key]

    # -- hooks
    def _pre_first(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        hidden = args[0] if args else kwargs["hidden_states"]
        self.state.full_len = hidden.shape[1]
        self.state.padded_len = math.ceil(hidden.shape[1] / self.world) * self.world
        return self._pre_any(module, args, kwargs, first=True)

    def _pre_any(self, module: Any, args: tuple, kwargs: dict, first: bool = False) -> tuple[tuple, dict]:
        names = ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb")
        values = dict(zip(names, args, strict=False))
        values.update(kwargs)
        if first:
            values["hidden_states"] = self._shard(values["hidden_states"])
        temb = values.get("temb")
        if temb is not None and temb.ndim == 4 and temb.shape[1] == self.state.full_len:  # per-token timesteps
            values["temb"] = self._shard(temb)
        values["rotary_emb"] = self._shard_rotary(values.get("rotary_emb"))
        return (), values

    def _post_last(self, module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        import torch.distributed as tdist

        parts = [torch.empty_like(output) for _ in range(self.world)]
        tdist.all_gather(parts, output.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.state.full_len]

    def __enter__(self) -> SequenceParallel:
        blocks = self.family.blocks(self.transformer)
        for block in blocks:
            attn = self.family.self_attention(block)
            self._processors.append(attn.processor)
            attn.set_processor(UlyssesSelfAttention(self.group, self.state, self.family))
        self._handles.append(blocks[0].register_forward_pre_hook(self._pre_first, with_kwargs=True))
        for block in list(blocks)[1:]:
            self._handles.append(block.register_forward_pre_hook(self._pre_any, with_kwargs=True))
        self._handles.append(blocks[-1].register_forward_hook(self._post_last, with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        for block, processor in zip(self.family.blocks(self.transformer), self._processors, strict=True):
            self.family.self_attention(block).set_processor(processor)
        self._handles.clear()
        self._processors.clear()
        self.state.rotary_cache = {}


# ---------------------------------------------------------------- ZeRO-Inference
def zero_inference_config(offload: str = "cpu", dtype: str = "fp32") -> dict:
    """A DeepSpeed ZeRO stage-3 config that keeps parameters off the GPU until each module runs."""
    cfg: dict = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_optimization": {
            "stage": 3,
            "offload_param": {"device": offload, "pin_memory": offload == "cpu" and torch.cuda.is_available()},
            "stage3_param_persistence_threshold": 0,
        },
    }
    if dtype in ("bf16", "fp16"):
        cfg[dtype] = {"enabled": True}
    return cfg


def zero_inference(transformer: Any, offload: str = "cpu", dtype: str = "fp32") -> Any:
    """Wrap the transformer with ZeRO-3 parameter offload; returns the (same, now partitioned) module.

    Every submodule gathers its parameters in a pre-forward hook, so code that calls the
    transformer's parts directly (cat.cat_forward) works too; parameters read outside any
    submodule's forward are gathered by :func:`gathered_edge_params`.
    """
    import deepspeed

    if not launched_distributed():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
    import torch.distributed as tdist

    if not tdist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    engine, *_ = deepspeed.initialize(model=transformer, config=zero_inference_config(offload, dtype))
    module = engine.module
    module.eval()
    module._cinelora_zero_engine = engine  # keep the engine (and its hooks) alive with the module
    return module


@contextlib.contextmanager
def gathered_edge_params(transformer: Any) -> Iterator[None]:
    """Under ZeRO-3, gather the parameters `cat.cat_forward` reads outside a submodule's forward
    (the model's own scale_shift_table, the patch embedding's weight used as a matrix); a no-op otherwise."""
    if getattr(transformer, "_cinelora_zero_engine", None) is None:
        yield
        return
    import deepspeed

    params = family_of(transformer).edge_params(transformer)
    with deepspeed.zero.GatheredParameters(params):
        yield
