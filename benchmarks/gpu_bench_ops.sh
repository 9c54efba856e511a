#!/usr/bin/env bash
# One command for a GPU machine: the GPU-marked Triton tests and the three op
# benchmarks (forward and forward+backward time, peak memory; triton / cuda /
# torch eager / SDPA composition at X-CLIP shapes), written as a table.
#
#   bash benchmarks/gpu_bench_ops.sh            # results under $OUT (default benchmarks/out)
#
# Uses $PYTHON (default: .venv/bin/python if present, else python3). The
# package is imported from this checkout (PYTHONPATH); build the CUDA
# extension beforehand (pip install -e . --no-build-isolation --no-deps) for
# the `cuda` backend to appear. pytest-benchmark is optional: the table comes
# from the standalone runner in benchmarks/_op_bench.py, the pytest-benchmark
# run (when installed) adds its JSON.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    PYTHON=.venv/bin/python
  else
    PYTHON=python3
  fi
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
unset TRITON_INTERPRET
status=0

{
  echo "# xclip-kernels op benchmarks ($(date -u +%Y-%m-%dT%H:%MZ))"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
  "$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  "$PYTHON" -c "import xclip_kernels as xk; [print(s) for s in xk.available_backends().values()]"
} | tee "$OUT/env.txt"

echo "== GPU tests (tests/kernels/test_triton_gpu.py, tests/kernels/test_triton_kernels.py on CUDA)"
"$PYTHON" -m pytest -p no:cacheprovider -q -m gpu tests/kernels/test_triton_gpu.py 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
"$PYTHON" -m pytest -p no:cacheprovider -q tests/kernels/test_triton_kernels.py 2>&1 | tee "$OUT/triton_kernel_tests_cuda.txt" || status=1

echo "== op benchmarks (standalone runner)"
"$PYTHON" benchmarks/_op_bench.py --out "$OUT/ops_table.md" --json "$OUT/ops_rows.json" 2>"$OUT/ops_progress.log" || status=1

if "$PYTHON" -c "import pytest_benchmark" 2>/dev/null; then
  echo "== op benchmarks (pytest-benchmark)"
  "$PYTHON" -m pytest -p no:cacheprovider -q --benchmark-enable --benchmark-json="$OUT/ops_pytest_benchmark.json" \
    benchmarks/bench_cross_frame_attn.py benchmarks/bench_intra_frame_attn.py benchmarks/bench_prompt_cross_attn.py \
    2>&1 | tail -n 80 > "$OUT/ops_pytest_benchmark.txt" || status=1
  "$PYTHON" benchmarks/_op_bench.py --from-pytest-json "$OUT/ops_pytest_benchmark.json" --out "$OUT/ops_table_pytest.md" >/dev/null || true
fi
cat "$OUT/ops_table.md"
exit $status
