"""Loading the compiled extension ``xclip_kernels._C`` and checking its build.

The package works without the extension (torch / Triton backends). When it is
present, the build metadata written by setup.py is compared with the running
torch: a mismatch is a warning that names both versions, never a crash.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

error: str | None = None  # why the extension is unusable, or None
build_info: dict = {}

try:
    from . import _build_info as _bi  # written by setup.py

    build_info = dict(_bi.BUILD_INFO)
except ImportError:
    build_info = {}

if build_info.get("cuda_extension") is False:
    error = f"CUDA extension not built ({build_info.get('skip_reason', 'skipped at build time')})"
else:
    try:
        if importlib.util.find_spec("xclip_kernels._C") is None:
            error = "CUDA extension xclip_kernels._C not built (no nvcc at install time, or not installed with pip)"
        else:
            from . import _C  # noqa: F401  (registers the xclip::*_cuda ops)
    except ImportError as e:
        error = f"CUDA extension xclip_kernels._C not importable ({e})"

if error is None and build_info:
    built_torch = build_info.get("torch_version", "")
    if built_torch and built_torch.split("+")[0] != torch.__version__.split("+")[0]:
        warnings.warn(
            f"xclip_kernels._C was built against torch {built_torch} but torch {torch.__version__} is "
            "running; rebuild with `pip install -e . --no-build-isolation` if the cuda backend misbehaves",
            RuntimeWarning,
            stacklevel=2,
        )
    built_cuda = build_info.get("cuda_version")
    if built_cuda and torch.version.cuda and built_cuda.split(".")[0] != torch.version.cuda.split(".")[0]:
        warnings.warn(
            f"xclip_kernels._C was built with CUDA {built_cuda} but torch uses CUDA {torch.version.cuda}",
            RuntimeWarning,
            stacklevel=2,
        )


def has_cuda_kernel(op_name: str) -> bool:
    """True when ``xclip::<op_name>`` exists and has a CUDA kernel registered."""
    if error is not None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"xclip::{op_name}", "CUDA")
    except RuntimeError:
        return False
