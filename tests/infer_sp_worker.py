"""Worker for the sequence-parallel test: launched with torchrun on 2 gloo ranks.

    torchrun --standalone --nproc_per_node 2 tests/infer_sp_worker.py OUT.safetensors [cat]

Builds the tiny transformer from a fixed seed, runs one forward under Ulysses sequence parallel
(uniform, or the mixed CAT sequence with `cat`) and rank 0 saves the output.
"""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

import core  # noqa: F401
from infer.parallel import SequenceParallel, init_parallel
from tests.infer_sp_inputs import forward, sp_inputs


def main() -> None:
    out_path, mode = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "uniform")
    ctx = init_parallel()
    transformer, inputs = sp_inputs()
    with torch.no_grad(), SequenceParallel(transformer, ctx.sp_group):
        result = forward(transformer, inputs, mode)
    if ctx.is_main:
        save_file({"out": result.contiguous()}, out_path)


if __name__ == "__main__":
    main()
