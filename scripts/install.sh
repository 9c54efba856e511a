#!/usr/bin/env bash
# Fresh-machine set-up of xclip-kernels: a virtual environment in .venv with
# torch 2.14.1 (CUDA 13 build), the package (editable) with its CUDA extension
# compiled when nvcc is found, and the test tools. Idempotent.
#
#   bash scripts/install.sh            # then: .venv/bin/xclip demo
#
# Environment: PYTHON (interpreter, default python3.11 or python3),
# XCLIP_KERNELS_SKIP_CUDA_BUILD=1 (skip the extension), TORCH_CUDA_ARCH_LIST.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if command -v python3.11 >/dev/null 2>&1; then PY=python3.11; else PY=python3; fi
fi
"$PY" -c 'import sys; assert sys.version_info >= (3, 10), "Python >= 3.10 needed"' 

if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
echo "[install] torch 2.14.1 + torchvision 0.29.1"
"$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VPY" -m pip install -q "setuptools>=64" wheel ninja
echo "[install] xclip-kernels (editable, CUDA extension compiled if nvcc is found; this takes a few minutes)"
"$VPY" -m pip install -q -e ".[dev]" --no-build-isolation
"$VPY" - <<'PY'
import xclip_kernels as xk
info = xk.build_info()
print("[install] done: CUDA extension", "built" if info.get("cuda_extension") else "not built",
      "-", info.get("extension_error") or "imports")
PY
