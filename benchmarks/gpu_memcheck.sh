#!/usr/bin/env bash
# Runs the CUDA backend's gpu tests under NVIDIA compute-sanitizer, for a GPU
# session: memcheck (out-of-bounds / misaligned global and shared accesses)
# over all of tests/kernels/test_cuda_backend.py, then racecheck (shared-memory races:
# a missing __syncthreads) and synccheck (barrier misuse) over a small subset.
#
#   benchmarks/gpu_memcheck.sh [extra pytest args, e.g. -k cross_frame]
#
# Environment: PYTHON (default .venv/bin/python if present, else python),
# SANITIZER (default: compute-sanitizer on PATH or in $CUDA_HOME/bin),
# TOOLS (default "memcheck racecheck synccheck"). Writes logs to $OUT (or
# ./sanitizer_logs) and exits non-zero if any tool reports an error.
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
if [ -z "${SANITIZER:-}" ]; then
  SANITIZER=$(command -v compute-sanitizer || true)
  for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-*; do
    [ -z "$SANITIZER" ] && [ -n "$d" ] && [ -x "$d/bin/compute-sanitizer" ] && SANITIZER="$d/bin/compute-sanitizer"
  done
fi
if [ -z "$SANITIZER" ]; then
  echo "compute-sanitizer not found (set SANITIZER=/path/to/compute-sanitizer)" >&2
  exit 2
fi
LOGDIR=${OUT:-sanitizer_logs}
mkdir -p "$LOGDIR"
TOOLS=${TOOLS:-"memcheck racecheck synccheck"}

# exact allocations, so an out-of-bounds access is not hidden inside a cached block
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in $TOOLS; do
  if [ "$tool" = memcheck ]; then
    select=(-m gpu)
  else  # racecheck / synccheck are slow: one small case per op and dtype
    select=(-m gpu -k "test_against_float64_reference and (-1-)")
  fi
  echo "== compute-sanitizer --tool $tool" | tee "$LOGDIR/$tool.log"
  "$SANITIZER" --tool "$tool" --error-exitcode 99 --print-limit 50 \
    "$PYTHON" -m pytest tests/kernels/test_cuda_backend.py -q -p no:cacheprovider --timeout=3000 "${select[@]}" "$@" \
    2>&1 | tee -a "$LOGDIR/$tool.log"
  rc=${PIPESTATUS[0]}
  echo "== $tool exit status $rc" | tee -a "$LOGDIR/$tool.log"
  [ "$rc" -ne 0 ] && status=1
done
exit $status
