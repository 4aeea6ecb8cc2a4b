"""Fitting Wan 14B on smaller GPUs: fp8 base weights and block swap (offload).

- `apply_base_dtype`: the frozen transformer stored in float8_e4m3fn and computed in bf16 through
  diffusers' layerwise casting (each Linear is cast up just before it runs and back after). The
  model is cast to bf16 first: the casting hook skips patch_embedding, condition_embedder, norms
  and proj_out, which then keep bf16 (an fp32 model would fail in conv3d on bf16 inputs).
- `BlockSwap`: N transformer blocks keep their frozen weights in (pinned) host memory; forward
  pre-hooks copy a block's weights onto the device just before it runs and start copying the
  next swapped block on a side stream, so copy overlaps compute. The device copies are new
  tensors put in the module's parameter slots for the call only; the host tensors stay the
  parameters in between. Autograd keeps the device copies it saved, so backward (and the
  recompute of gradient checkpointing) sees the right weights, and frees them when done.
  Why not diffusers' group offload: its block-level mode offloads every block (no "keep the
  first 40 - N resident"), it swaps `param.data` in place, and its stream prefetch follows the
  forward order recorded on the first call, not backward's reverse recompute order.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from core.config import ConfigError

BASE_DTYPES = ("bf16", "fp8")
FP8 = torch.float8_e4m3fn


def apply_base_dtype(transformer: torch.nn.Module, base_dtype: str | None) -> torch.nn.Module:
    """bf16: cast to bf16. fp8: cast to bf16, then store Linear weights in float8_e4m3fn (compute bf16).
    None: leave as loaded (model.dtype)."""
    if base_dtype is None:
        return transformer
    if base_dtype not in BASE_DTYPES:
        raise ValueError(f"base_dtype '{base_dtype}' is not one of {BASE_DTYPES}")
    transformer.to(torch.bfloat16)
    if base_dtype == "fp8":
        transformer.enable_layerwise_casting(storage_dtype=FP8, compute_dtype=torch.bfloat16)
        for method in ("add_adapter", "load_lora_adapter"):  # what LoRA training and every LoRA loader call
            setattr(transformer, method, _adapters_in_fp32(transformer, getattr(transformer, method)))
    return transformer


def _storage_cast_modules(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules whose weights layerwise casting keeps in fp8 between calls."""
    return [
        m
        for m in transformer.modules()
        if getattr(m, "_diffusers_hook", None) is not None and m._diffusers_hook.get_hook("layerwise_casting")
    ]


def _adapters_in_fp32(transformer: torch.nn.Module, method: Any) -> Any:
    """Wrap an adapter-adding method so LoRA weights are created (and loaded) in fp32: peft makes them in the
    base layer's weight dtype, which with fp8 storage rounds a loaded LoRA to fp8 and then fails in its matmul.
    During the call each fp8 weight is replaced by an empty fp32 stand-in (peft reads only its dtype and
    device; the layer sizes come from in/out_features), so no memory is spent on a bf16 copy of the model."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        stored = []
        for module in _storage_cast_modules(transformer):
            weight = module._parameters.get("weight")
            if weight is not None and weight.dtype == FP8:
                stored.append((module, weight.data))
                weight.data = torch.empty(0, dtype=torch.float32, device=weight.device)
        try:
            return method(*args, **kwargs)
        finally:
            for module, data in stored:
                module._parameters["weight"].data = data

    return wrapped


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (as stored)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def in_backward() -> bool:
    """True inside autograd's backward (e.g. gradient checkpointing's recompute)."""
    return torch._C._current_graph_task_id() != -1


class BlockSwap:
    """Keeps the frozen weights of `swapped` blocks on `host` and streams them to `device` per call.

    Parameters that train (requires_grad) and buffers live on the device for good; they are
    moved there at the block's first call, so adapters added later (LoRA) need no extra step.
    """

    def __init__(self, transformer: Any, num_blocks: int, device: torch.device | str):
        blocks = transformer.blocks
        if not 0 < num_blocks <= len(blocks):
            raise ConfigError(
                f"model.blocks_to_swap={num_blocks} must be at most {len(blocks)} (the transformer "
                f"has {len(blocks)} blocks)"
            )
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.blocks = list(blocks)
        self.swapped = set(range(len(blocks) - num_blocks, len(blocks)))  # the last N blocks
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.loaded: dict[int, tuple[list[tuple[torch.nn.Module, str, torch.nn.Parameter]], Any]] = {}
        self.handles = []
        self.release_queued = False
        for index, block in enumerate(self.blocks):
            self.handles.append(block.register_forward_pre_hook(self._make_pre(index)))
            if index in self.swapped:
                self.handles.append(block.register_forward_hook(self._make_post(index)))
        self.offload()

    # ------------------------------------------------------------------ placement
    def offload(self) -> None:
        """Frozen weights of swapped blocks to host (pinned on CUDA), everything else of them to the device."""
        for index in self.swapped:
            block = self.blocks[index]
            for module in block.modules():
                for param in module._parameters.values():
                    if param is None:
                        continue
                    if param.requires_grad:
                        param.data = param.data.to(self.device)
                    elif param.device.type != "cpu" or (self.cuda and not param.is_pinned()):
                        host = param.data.to("cpu")
                        param.data = host.pin_memory() if self.cuda else host
                for name, buf in module._buffers.items():
                    if buf is not None:
                        module._buffers[name] = buf.to(self.device)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    # ------------------------------------------------------------------ hooks
    def _make_pre(self, index: int):
        def pre_hook(module: torch.nn.Module, args: Any) -> None:
            backward = in_backward()
            following = index + (-1 if backward else 1)  # backward (checkpoint recompute) runs blocks in reverse
            if backward and not self.release_queued:  # nothing stays on the device once backward is done
                self.release_queued = True
                torch.autograd.Variable._execution_engine.queue_callback(self._release_all)
            for other in [i for i in self.loaded if i not in (index, following)]:
                self._release(other)  # e.g. a recompute that checkpointing stopped early never ran its post-hook
            if index in self.swapped:
                self._activate(index)
            if following in self.swapped and following not in self.loaded:
                self._prefetch(following)

        return pre_hook

    def _make_post(self, index: int):
        def post_hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            self._release(index)

        return post_hook

    def _prefetch(self, index: int) -> None:
        """Start copying block `index`'s frozen weights to the device (on the side stream on CUDA; on a
        CPU device a fresh copy stands in for the transfer, so the same slots and release path run)."""
        slots = []
        with torch.cuda.stream(self.copy_stream) if self.cuda else contextlib.nullcontext():
            for module in self.blocks[index].modules():
                for name, param in list(module._parameters.items()):
                    if param is None:
                        continue
                    if param.requires_grad:  # trains: lives on the device (an adapter added after set-up moves now)
                        if param.device != self.device:
                            param.data = param.data.to(self.device)
                        continue
                    copy = param.detach().to(self.device, non_blocking=True) if self.cuda else param.detach().clone()
                    slots.append((module, name, param))
                    module._parameters[name] = torch.nn.Parameter(copy, requires_grad=False)
                for name, buf in module._buffers.items():
                    if buf is not None and buf.device != self.device:
                        module._buffers[name] = buf.to(self.device)
        event = None
        if self.cuda:
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.loaded[index] = (slots, event)

    def _activate(self, index: int) -> None:
        """Make block `index`'s weights usable on the compute stream (copy now if not prefetched)."""
        if index not in self.loaded:
            self._prefetch(index)
        slots, event = self.loaded[index]
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for module, name, _ in slots:
                module._parameters[name].data.record_stream(stream)  # allocated on the copy stream

    def _release_all(self) -> None:
        self.release_queued = False
        for index in list(self.loaded):
            self._release(index)

    def _release(self, index: int) -> None:
        """Put the host parameters back; autograd keeps the device copies it saved until backward."""
        slots, _ = self.loaded.pop(index, ([], None))
        for module, name, host in slots:
            module._parameters[name] = host


def apply_block_swap(transformer: Any, num_blocks: int, device: torch.device | str) -> BlockSwap | None:
    """Install block swap on `transformer` (0 = none). Idempotent: a second call replaces the first."""
    old = getattr(transformer, "_cinelora_block_swap", None)
    if old is not None:
        old.remove()
        transformer._cinelora_block_swap = None
    if num_blocks <= 0:
        return None
    swap = BlockSwap(transformer, num_blocks, device)
    transformer._cinelora_block_swap = swap
    return swap


def place_transformer(transformer: Any, device: torch.device | str, blocks_to_swap: int = 0) -> Any:
    """Move the transformer to `device`, except the frozen weights of the last `blocks_to_swap`
    blocks, which stay on the host and stream in per call (never the whole model on the GPU at once)."""
    device = torch.device(device)
    if blocks_to_swap <= 0:
        return transformer.to(device)
    first_swapped = len(transformer.blocks) - blocks_to_swap
    for name, child in transformer.named_children():
        if name != "blocks":
            child.to(device)
    for param in transformer.parameters(recurse=False):
        param.data = param.data.to(device)
    for index, block in enumerate(transformer.blocks):
        if index < first_swapped:
            block.to(device)
    apply_block_swap(transformer, blocks_to_swap, device)
    return transformer


def settle_block_swap(transformer: Any) -> None:
    """After adding an adapter: its trainable weights to the device now (DDP/optimizers see one device)."""
    swap = getattr(transformer, "_cinelora_block_swap", None)
    if swap is not None:
        swap.offload()


def check_training(
    blocks_to_swap: int,
    base_dtype: str | None,
    gradient_checkpointing: bool,
    num_processes: int,
    deepspeed: bool,
    base_lora_mode: str,
) -> None:
    """One-line refusals for memory options that a training run cannot combine."""
    if blocks_to_swap:
        if not gradient_checkpointing:
            raise ConfigError(
                "model.blocks_to_swap in training needs gradient_checkpointing=true (without it "
                "autograd keeps every swapped block on the GPU until backward)"
            )
        if num_processes > 1 or deepspeed:
            raise ConfigError(
                "model.blocks_to_swap is for one process without DeepSpeed; with several GPUs use "
                "the deepspeed_zero3*.yaml configs instead"
            )
    if base_dtype == "fp8" and base_lora_mode == "merged":
        raise ConfigError(
            "base_lora_mode=merged cannot fuse the stage-1 LoRA into fp8 weights; use "
            "base_lora_mode=frozen with model.base_dtype=fp8"
        )
