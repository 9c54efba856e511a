"""Benchmark of `xk.cross_frame_attn`: message-token cross-frame attention, q/k/v [B, T, H, D] (views of a packed qkv projection); T = 8, 16, 32 at the ViT-B and ViT-L/14 message widths.

Forward and forward+backward time (pytest-benchmark) and peak CUDA memory
(`extra_info["peak_mem_MiB"]`) of every backend that can run the inputs
(triton, cuda, torch = the eager reference) and of the plain-PyTorch SDPA
composition. Each case first checks its result against the eager reference.
On the CPU the shapes are tiny and the file runs as a test (pyproject's
`--benchmark-disable` runs each case once); on a GPU, run with
`--benchmark-enable` (see benchmarks/gpu_bench_ops.sh). Never fails on a time.
"""

from __future__ import annotations

import pytest

from _op_bench import CONTENDERS, MODES, run_benchmark, shape_id, shapes

OP = "cross_frame_attn"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dims", shapes(OP), ids=shape_id)
def test_cross_frame_attn(benchmark, dims, contender, mode):
    benchmark.group = f"{OP} {shape_id(dims)} {mode}"
    run_benchmark(benchmark, OP, dims, contender, mode)
