#!/usr/bin/env bash
# One command on a GPU machine: build the CUDA extension, run the `gpu` tests,
# run every benchmark (the op benchmarks benchmarks/bench_*.py and the
# whole-model comparison `xclip bench`), and write a results table.
#
#   bash benchmarks/gpu_check.sh                  # every stage, results in $OUT or ./bench_out
#   bash benchmarks/gpu_check.sh build test ops   # only these stages (in this order)
#
# Stages (default: all, in this order; `report` always runs last):
#   env            GPU, driver, torch / triton / transformers versions, backends
#   build          pip install -e . --no-build-isolation --no-deps (compiles the extension;
#                  skipped when the installed one already has its CUDA kernels)
#   test           pytest -m gpu tests/
#   ops            pytest -m gpu benchmarks/ --benchmark-enable (op benchmarks and the
#                  pytest-benchmark model cases at the target point) -> ops_benchmarks.json
#   model          xclip bench at the target point: ViT-B/16, 8 frames, batch 32, bf16,
#                  eager and torch.compile, then CUDA graphs for inference
#   sweep          xclip bench: B/32, B/16, L/14 x 8, 16 frames x fp16, bf16, eager
#   sweep-compile  the same sweep under torch.compile (long: one compile per model)
#   report         $OUT/gpu_check.md: environment, stage status, model table, op table
#
# Environment:
#   OUT               output folder (default ./bench_out)
#   PYTHON            interpreter (default .venv/bin/python if it exists, else python3)
#   GPU_CHECK_BUDGET  seconds for the whole command (0 = none). Stages are cut at the
#                     budget (what they measured so far is kept) and the report still
#                     runs; for a 10-minute device call use e.g. GPU_CHECK_BUDGET=540.
#   BATCH             views per batch (default 32)
#   SWEEP_ARCHS, SWEEP_FRAMES, SWEEP_DTYPES   restrict the sweeps (space-separated)
#   TORCH_CUDA_ARCH_LIST, MAX_JOBS            build settings (default: this GPU, nproc)
#
# Through the session `device` tool (10 minutes a call; $OUT comes back, at most 8
# files, so the outputs are kept to: gpu_check.md, gpu_check.log,
# ops_benchmarks.json, model/results.{jsonl,json,md,png}):
#   call 1: GPU_CHECK_BUDGET=560 bash benchmarks/gpu_check.sh env build test ops model
#   call 2: GPU_CHECK_BUDGET=560 bash benchmarks/gpu_check.sh build sweep
#   call 3: GPU_CHECK_BUDGET=560 SWEEP_ARCHS="ViT-B/16" bash benchmarks/gpu_check.sh build sweep-compile
# then, here, `xclip bench --report DIR` merges any results.jsonl you concatenate into DIR.
set -u -o pipefail
cd "$(dirname "$0")/.."

OUT="${OUT:-./bench_out}"
mkdir -p "$OUT" "$OUT/model"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
STATUS="$OUT/.stages.tsv"
: >"$STATUS"

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x .venv/bin/python ]; then PY=.venv/bin/python
else PY=python3; fi

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
unset TRITON_INTERPRET
BATCH="${BATCH:-32}"
BUDGET="${GPU_CHECK_BUDGET:-0}"
START=$(date +%s)
REPORT_RESERVE=25

remaining() {  # seconds left for a stage (0 = no limit)
  if [ "$BUDGET" = "0" ]; then echo 0; return; fi
  local left=$(( BUDGET - ($(date +%s) - START) - REPORT_RESERVE ))
  [ "$left" -lt 1 ] && left=1
  echo "$left"
}

stage() {  # stage NAME COMMAND... : run with the remaining budget, log, record status
  local name="$1"; shift
  local t0=$(date +%s) rc left
  left=$(remaining)
  echo "=== [$name] $(date -u +%H:%M:%S) $*" | tee -a "$LOG"
  if [ "$BUDGET" != "0" ] && [ "$left" -le 1 ]; then
    echo "=== [$name] skipped: budget spent" | tee -a "$LOG"
    printf '%s\t%s\t%s\n' "$name" "skipped (budget spent)" 0 >>"$STATUS"
    return 0
  fi
  if [ "$left" = "0" ]; then
    bash -c '"$@"' _ "$@" 2>&1 | tee -a "$LOG"; rc=${PIPESTATUS[0]}
  else  # the stage functions are exported (export -f) so that timeout can run them in a child bash
    timeout --signal=INT --kill-after=20 "$left" bash -c '"$@"' _ "$@" 2>&1 | tee -a "$LOG"; rc=${PIPESTATUS[0]}
  fi
  local dt=$(( $(date +%s) - t0 ))
  local what="ok"
  [ "$rc" != 0 ] && what="rc=$rc"
  { [ "$rc" = 124 ] || [ "$rc" = 130 ] || [ "$rc" = 137 ]; } && what="cut at budget (rc=$rc)"
  echo "=== [$name] $what in ${dt}s" | tee -a "$LOG"
  printf '%s\t%s\t%s\n' "$name" "$what" "$dt" >>"$STATUS"
  return 0
}

do_env() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  "$PY" - <<'PY'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
for mod in ("triton", "transformers"):
    try:
        print(mod, __import__(mod).__version__)
    except Exception as e:
        print(mod, "unavailable:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, f"sm_{p.major}{p.minor}", f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
try:
    import xclip_kernels as xk
    for st in xk.available_backends().values():
        print("backend", st)
    print("build", xk.build_info())
except Exception as e:
    print("xclip_kernels not importable yet:", e)
PY
}

do_build() {
  if "$PY" -c 'import sys, xclip_kernels as xk; sys.exit(0 if xk.available_backends()["cuda"].available else 1)' 2>/dev/null; then
    echo "extension already built with CUDA kernels for this torch: not rebuilding"
    return 0
  fi
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$("$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print(f"{c[0]}.{c[1]}")')}"
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  echo "TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST MAX_JOBS=$MAX_JOBS"
  "$PY" -m pip install -e . --no-build-isolation --no-deps || return $?
  "$PY" -c 'import xclip_kernels as xk; print(xk.build_info()); [print(s) for s in xk.available_backends().values()]'
}

do_test() {
  "$PY" -m pytest -m gpu tests -q -p no:cacheprovider -rfEs --timeout=600
}

do_ops() {
  "$PY" -m pytest -m gpu benchmarks -q -p no:cacheprovider -rfEs --timeout=900 \
    --benchmark-enable --benchmark-json="$OUT/ops_benchmarks.json" --benchmark-columns=min,median,mean,ops,rounds
}

# XBENCH_EXTRA: extra `xclip bench` arguments appended to every call (the CPU test uses --tiny ...)
xbench() { # shellcheck disable=SC2086
  "$PY" -m xclip bench --batch "$BATCH" --views 4x3 --out "$OUT/model" "$@" ${XBENCH_EXTRA:-}; }

do_model() {
  xbench --arch ViT-B/16 --frames 8 --dtype bf16 --modes eager compile
  local rc=$?
  xbench --arch ViT-B/16 --frames 8 --dtype bf16 --modes eager compile --cuda-graphs --no-train || rc=$?
  return $rc
}

SWEEP_ARCHS="${SWEEP_ARCHS:-ViT-B/32 ViT-B/16 ViT-L/14}"
SWEEP_FRAMES="${SWEEP_FRAMES:-8 16}"
SWEEP_DTYPES="${SWEEP_DTYPES:-bf16 fp16}"
# shellcheck disable=SC2086
do_sweep() { xbench --arch $SWEEP_ARCHS --frames $SWEEP_FRAMES --dtype $SWEEP_DTYPES --modes eager; }
# shellcheck disable=SC2086
do_sweep_compile() { xbench --arch $SWEEP_ARCHS --frames $SWEEP_FRAMES --dtype $SWEEP_DTYPES --modes compile; }

do_report() {
  if [ -s "$OUT/model/results.jsonl" ]; then
    "$PY" -m xclip bench --report "$OUT/model" >/dev/null || echo "model report failed"
  fi
  OUT="$OUT" "$PY" - <<'PY'
import json, os, pathlib, subprocess
out = pathlib.Path(os.environ["OUT"])
lines = ["# gpu_check results", ""]
log = (out / "gpu_check.log").read_text(errors="replace") if (out / "gpu_check.log").exists() else ""
env = [l for l in log.splitlines() if l.startswith(("python ", "device ", "backend ", "triton ", "transformers "))]
try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout
    if rev:
        env.insert(0, f"commit {rev}" + (" (with uncommitted changes)" if dirty.strip() else ""))
except Exception:
    pass
lines += ["## Environment", ""] + [f"- {l}" for l in dict.fromkeys(env) if l] + [""]
lines += ["## Stages", "", "| stage | result | seconds |", "|---|---|---|"]
st = out / ".stages.tsv"
for row in (st.read_text().splitlines() if st.exists() else []):
    name, what, secs = (row.split("\t") + ["", ""])[:3]
    lines.append(f"| {name} | {what} | {secs} |")
lines.append("")
summ = [l for l in log.splitlines() if l.startswith(("FAILED", "ERROR")) or (" passed" in l and " in " in l)]
if summ:
    lines += ["## pytest summaries", "", "```"] + summ[-40:] + ["```", ""]
md = out / "model" / "results.md"
if md.exists():
    body = md.read_text().split("\n", 1)[1]
    lines += ["## Whole model (`xclip bench`)", body, ""]
bj = out / "ops_benchmarks.json"
if bj.exists():
    data = json.loads(bj.read_text())
    lines += ["## pytest-benchmark (benchmarks/bench_*.py, -m gpu)", "",
              "| benchmark | median ms | min ms | rounds | extra |", "|---|---|---|---|---|"]
    for b in data.get("benchmarks", []):
        s = b["stats"]
        extra = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in (b.get("extra_info") or {}).items())
        lines.append(f"| {b['fullname'].split('::')[-1]} | {s['median'] * 1e3:.3f} | {s['min'] * 1e3:.3f} | {s['rounds']} | {extra} |")
    lines.append("")
(out / "gpu_check.md").write_text("\n".join(lines))
print("\n".join(lines))
PY
}

export PY OUT LOG BATCH SWEEP_ARCHS SWEEP_FRAMES SWEEP_DTYPES XBENCH_EXTRA="${XBENCH_EXTRA:-}"
export -f do_env do_build do_test do_ops xbench do_model do_sweep do_sweep_compile

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env build test ops model sweep sweep-compile)
echo "gpu_check: stages ${STAGES[*]} -> $OUT (budget ${BUDGET}s)" | tee -a "$LOG"
for s in "${STAGES[@]}"; do
  case "$s" in
    env) stage env do_env ;;
    build) stage build do_build ;;
    test) stage test do_test ;;
    ops) stage ops do_ops ;;
    model) stage model do_model ;;
    sweep) stage sweep do_sweep ;;
    sweep-compile) stage sweep-compile do_sweep_compile ;;
    report) ;;
    *) echo "gpu_check: unknown stage '$s' (env build test ops model sweep sweep-compile report)" >&2; exit 2 ;;
  esac
done
do_report 2>&1 | tee -a "$LOG" >/dev/null
rm -f "$STATUS"
echo "gpu_check: wrote $OUT/gpu_check.md"
