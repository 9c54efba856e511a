"""Build of xclip-kernels: the Python packages plus the CUDA extension ``xclip_kernels._C``.

The extension is compiled whenever nvcc is found, with or without a GPU.
``XCLIP_KERNELS_SKIP_CUDA_BUILD=1`` skips it; the package then works with its
torch and Triton backends. Build metadata (torch, CUDA, arch list) is written
to ``xclip_kernels/_build_info.py`` and checked at import.

Install with ``pip install -e . --no-build-isolation`` (build isolation would
pull a second multi-GB torch).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent


def log(msg: str) -> None:
    print(f"[xclip-kernels setup] {msg}", file=sys.stderr, flush=True)


def _valid_toolkit(path: str | os.PathLike | None) -> bool:
    if not path:
        return False
    p = Path(path)
    return (p / "bin" / "nvcc").is_file() and (p / "include" / "cuda_runtime.h").is_file()


def find_cuda_home() -> str | None:
    """The real CUDA toolkit. The nvcc on PATH may be a wrapper script outside
    the toolkit, so torch's guess (the wrapper's parent folder) can be wrong:
    ask nvcc itself (its dry run prints TOP=<toolkit>/bin/..), then look at
    what a wrapper script execs, then the usual folders."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _valid_toolkit(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run(
                [nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull], capture_output=True, text=True, timeout=60
            )
            m = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
            if m and _valid_toolkit(Path(m.group(1)).resolve()):
                return str(Path(m.group(1)).resolve())
        except (OSError, subprocess.SubprocessError):
            pass
        real = Path(nvcc).resolve()
        if _valid_toolkit(real.parent.parent):
            return str(real.parent.parent)
        try:
            text = real.read_text(errors="ignore")[:4096]
            for cand in re.findall(r"(/\S+?)/bin/nvcc", text):
                if _valid_toolkit(cand):
                    return cand
        except OSError:
            pass
    for cand in ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/opt/cuda"]:
        if _valid_toolkit(cand):
            return cand
    return None


def nvcc_version(cuda_home: str) -> str:
    out = subprocess.run([f"{cuda_home}/bin/nvcc", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else "unknown"


def default_max_jobs() -> int:
    cores = os.cpu_count() or 1
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gb = 8.0
    # an nvcc job over torch headers peaks around 3-4 GB
    return max(1, min(cores, int(mem_gb // 4)))


def write_build_info(info: dict) -> None:
    path = ROOT / "xclip_kernels" / "_build_info.py"
    body = "# Written by setup.py at build time; read by xclip_kernels._extension.\n"
    body += f"BUILD_INFO = {info!r}\n"
    path.write_text(body)


def main() -> None:
    import torch

    info = {
        "torch_version": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "cuda_extension": False,
    }
    ext_modules = []
    cmdclass = {}
    cuda_home = None
    skip = os.environ.get("XCLIP_KERNELS_SKIP_CUDA_BUILD", "0") not in ("", "0")
    if skip:
        info["skip_reason"] = "XCLIP_KERNELS_SKIP_CUDA_BUILD=1"
    else:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            info["skip_reason"] = "no CUDA toolkit (nvcc) found at build time"
    if info.get("skip_reason"):
        log(f"not building the CUDA extension: {info['skip_reason']}")
    else:
        os.environ["CUDA_HOME"] = cuda_home
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            # no GPU to ask: Ampere and Hopper (sm_80, sm_90) by default
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        os.environ.setdefault("MAX_JOBS", str(default_max_jobs()))
        import torch.utils.cpp_extension as cpp

        cpp.CUDA_HOME = cuda_home  # torch computed its guess at import time
        info.update(
            cuda_extension=True,
            cuda_home=cuda_home,
            cuda_version=nvcc_version(cuda_home),
            arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST", "(from the visible GPU)"),
        )
        log(
            f"building xclip_kernels._C with CUDA {info['cuda_version']} at {cuda_home}, "
            f"arch {info['arch_list']}, MAX_JOBS={os.environ['MAX_JOBS']}"
        )
        sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
        sources = [s for s in sources if not s.endswith("cmake_only.cpp")]
        warn = ["-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
        ext_modules.append(
            cpp.CUDAExtension(
                name="xclip_kernels._C",
                sources=sources,
                include_dirs=[str(ROOT / "csrc")],
                define_macros=[("XCLIP_PYTHON_MODULE", "1")],
                extra_compile_args={
                    "cxx": ["-O3", "-std=c++20", *warn],
                    "nvcc": [
                        "-O3",
                        "-std=c++20",
                        "-lineinfo",
                        "--expt-relaxed-constexpr",
                        "-Xcompiler=" + ",".join(warn),
                        "-U__CUDA_NO_HALF_OPERATORS__",
                        "-U__CUDA_NO_HALF_CONVERSIONS__",
                        "-U__CUDA_NO_BFLOAT16_OPERATORS__",
                        "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                    ],
                },
            )
        )
        cmdclass["build_ext"] = cpp.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)
    write_build_info(info)
    setup(ext_modules=ext_modules, cmdclass=cmdclass)


if __name__ == "__main__":
    main()
