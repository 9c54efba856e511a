"""Benchmark of `xk.prompt_cross_attn`: video-conditioned prompt cross-attention, a shared q [K=400, H, D] over k/v [B=32, N, H, D], N = 50 / 197 / 257; sdpa runs on q expanded to [B, K, H, D].

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

OP = "prompt_cross_attn"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("dims", shapes(OP), ids=shape_id)
def test_prompt_cross_attn(benchmark, dims, contender, mode):
    benchmark.group = f"{OP} {shape_id(dims)} {mode}"
    run_benchmark(benchmark, OP, dims, contender, mode)
