"""Worker for the sequence-parallel test: launched with torchrun on 2 gloo ranks.

    torchrun --standalone --nproc_per_node 2 tests/infer_sp_worker.py OUT.safetensors

Builds the tiny transformer from a fixed seed, runs one forward under Ulysses sequence parallel
for the uniform sequence (stock forward) and for a mixed CAT sequence (`cat.cat_forward`), both
with token counts that need padding; rank 0 saves the outputs.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

import core  # noqa: F401
from infer.parallel import SequenceParallel, init_parallel
from tests.infer_sp_inputs import forward, sp_inputs


def main() -> None:
    ctx = init_parallel()
    transformer, inputs = sp_inputs()
    outputs = {}
    with torch.no_grad(), SequenceParallel(transformer, ctx.sp_group):
        for mode in ("uniform", "cat"):
            outputs[mode] = forward(transformer, inputs, mode).contiguous()
    if ctx.is_main:
        save_file(outputs, sys.argv[1])


if __name__ == "__main__":
    main()
