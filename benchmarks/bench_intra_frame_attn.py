"""Benchmark of `xk.intra_frame_attn`: intra-frame attention with an appended message token, q/k/v [F, N, H, D] + k_msg/v_msg [F, 1, H, D]; N = 50 (B/32), 197 (B/16), 257 (L/14), F = 8 videos x T (8, 16, 32) frames; sdpa runs on cat(k, k_msg).

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

OP = "intra_frame_attn"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dims", shapes(OP), ids=shape_id)
def test_intra_frame_attn(benchmark, dims, contender, mode):
    benchmark.group = f"{OP} {shape_id(dims)} {mode}"
    run_benchmark(benchmark, OP, dims, contender, mode)
