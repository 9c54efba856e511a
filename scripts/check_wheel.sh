#!/usr/bin/env bash
# Build a wheel of this checkout, install it into a fresh virtual environment and run the `xclip` CLI from a
# folder outside the repository: the installed package must not read anything from the checkout.
#
#   scripts/check_wheel.sh                 # WORK defaults to a new temporary folder (printed)
#   PYTHON=/path/to/venv/bin/python WORK=/tmp/wheel-check BENCH_ARGS="--batch 2" scripts/check_wheel.sh
#
# PYTHON: the interpreter whose environment builds the wheel (--no-build-isolation: its torch) and provides
# the dependencies (torch, open_clip_torch, transformers...), which the fresh environment reads through
# PYTHONPATH; its own copy of xclip-kernels (an editable install) is not visible that way (no .pth files are
# read from PYTHONPATH), and the script checks that `xclip` is imported from the fresh environment.
# XCLIP_KERNELS_SKIP_CUDA_BUILD defaults to 1 here (no CUDA extension: faster; the CLI does not need it).
set -euo pipefail
PYTHON=${PYTHON:-python}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-$(mktemp -d -t xclip-wheel-XXXXXX)}
BENCH_ARGS=${BENCH_ARGS:-}
export XCLIP_KERNELS_SKIP_CUDA_BUILD=${XCLIP_KERNELS_SKIP_CUDA_BUILD:-1}
DEPS=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "== work folder: $WORK"
mkdir -p "$WORK/src" "$WORK/whl" "$WORK/run"

echo "== clean copy of the checkout (tracked and untracked-not-ignored files; no build products)"
(cd "$ROOT" && git ls-files -z -co --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$WORK/src"

echo "== pip wheel --no-build-isolation --no-deps"
start=$SECONDS
"$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$WORK/whl" "$WORK/src"
WHEEL=$(ls "$WORK"/whl/xclip_kernels-*.whl)
echo "built $(basename "$WHEEL") in $((SECONDS - start)) s"
"$PYTHON" -m zipfile -l "$WHEEL" | awk 'NR > 1 {print $1}' | grep -E '^(xclip|xclip_kernels)/' | sed 's|/[^/]*$||' | sort | uniq -c

echo "== fresh virtual environment, wheel installed without dependencies"
"$PYTHON" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --no-deps --no-index "$WHEEL"

cd "$WORK/run"  # outside the repository
export PYTHONPATH="$DEPS"
PY="$WORK/venv/bin/python"
"$PY" - "$WORK/venv" "$ROOT" <<'PYEOF'
import sys
from pathlib import Path

import xclip, xclip_kernels
venv, root = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
for mod in (xclip, xclip_kernels):
    where = Path(mod.__file__).resolve()
    assert venv in where.parents, f"{mod.__name__} imported from {where}, not from the fresh environment {venv}"
    print(f"{mod.__name__} from {where.parent}")
ids = xclip.tokenize(["a video of a dog running"])
print(f"tokenizer (vocabulary from open_clip): {tuple(ids.shape)}, first ids {ids[0, :8].tolist()}")
PYEOF
echo "== xclip --help"
"$WORK/venv/bin/xclip" --help
echo "== xclip demo --help"
"$WORK/venv/bin/xclip" demo --help | head -5
echo "== xclip predict --help"
"$WORK/venv/bin/xclip" predict --help | head -5
echo "== xclip bench --tiny $BENCH_ARGS"
start=$SECONDS
# shellcheck disable=SC2086
"$WORK/venv/bin/xclip" bench --tiny --out "$WORK/run/bench_out" $BENCH_ARGS
echo "bench took $((SECONDS - start)) s"
ls "$WORK/run/bench_out"
echo "== wheel check passed"
