#!/usr/bin/env bash
# Fresh-machine set-up of xclip-kernels: a virtual environment in .venv with
# torch 2.14.1 (CUDA 13 build), the package (editable) with its CUDA extension
# compiled when nvcc is found, the test tools, and torchcodec with the FFmpeg
# shared libraries it needs (through apt-get when it can). Idempotent.
#
#   bash scripts/install.sh            # then: .venv/bin/xclip demo
#
# Environment: PYTHON (interpreter, default python3.11 or python3),
# XCLIP_KERNELS_SKIP_CUDA_BUILD=1 (skip the extension), TORCH_CUDA_ARCH_LIST,
# XCLIP_SYSTEM_PACKAGES=0 (never call apt-get: torchcodec then works only if
# FFmpeg's libraries are already there, otherwise videos decode with PyAV).
set -euo pipefail
cd "$(dirname "$0")/.."

# --- FFmpeg shared libraries for torchcodec (Debian 12 / Ubuntu 22.04 names:
# FFmpeg 5.1). PyAV bundles its own FFmpeg and needs none of this.
FFMPEG_PKGS="libavcodec59 libavformat59 libavutil57 libswscale6 libswresample4 libavdevice59 libavfilter8"
ffmpeg_libs_present() { ldconfig -p 2>/dev/null | grep -Eq 'libavutil\.so\.(5[6-9]|6[0-9])'; }
install_ffmpeg_libs() {
  if ffmpeg_libs_present; then echo "[install] FFmpeg shared libraries found"; return 0; fi
  if [ "${XCLIP_SYSTEM_PACKAGES:-1}" = "0" ]; then echo "[install] XCLIP_SYSTEM_PACKAGES=0: not calling apt-get"; return 1; fi
  if ! command -v apt-get >/dev/null 2>&1; then echo "[install] no apt-get on this machine"; return 1; fi
  local SUDO=""
  if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"
    else echo "[install] not root and no password-less sudo: cannot apt-get install"; return 1; fi
  fi
  echo "[install] apt-get install $FFMPEG_PKGS"
  if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $FFMPEG_PKGS >/dev/null 2>&1 \
     || { $SUDO apt-get update -q >/dev/null 2>&1 \
          && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $FFMPEG_PKGS >/dev/null 2>&1; }; then
    ffmpeg_libs_present && return 0
  fi
  echo "[install] apt-get could not install the FFmpeg libraries (package names differ on this system?)"
  return 1
}
if install_ffmpeg_libs; then FFMPEG_OK=1; else FFMPEG_OK=0
  echo "[install] NOTE: FFmpeg shared libraries are not available, so torchcodec cannot decode here:"
  echo "[install]       videos will be decoded with PyAV (decoder: auto falls back to it; slower on long videos)."
  echo "[install]       To use torchcodec later: install FFmpeg 4-9's libavcodec/libavformat/libavutil/libswscale/"
  echo "[install]       libswresample/libavdevice/libavfilter (e.g. apt-get install $FFMPEG_PKGS)."
fi

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
echo "[install] torchcodec 0.17 (the build for torch 2.14)"
"$VPY" -m pip install -q torchcodec==0.17.0
"$VPY" - <<'PY'
import xclip_kernels as xk
info = xk.build_info()
print("[install] done: CUDA extension", "built" if info.get("cuda_extension") else "not built",
      "-", info.get("extension_error") or "imports")
from xclip.data.video_io import auto_decoder, decoder_status
ok, why = decoder_status("torchcodec")
print("[install] video decoding (decoder: auto):", auto_decoder(), "" if ok else f"- {why}")
PY
