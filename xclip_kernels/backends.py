"""What each backend supports, and why not.

A backend is a small class that declares the devices, dtypes and head dims it
handles and answers :meth:`Backend.not_supported_reasons` for one call's
inputs (the xformers dispatch style). The user-facing error for a forced
backend lists every reason; ``auto`` takes the first backend in
:data:`AUTO_ORDER` with no reason against it.

Kernel interface every backend implements, per op name ``op`` in
``OPS``: ``forward(op, tensors, scale) -> (out, lse)`` and
``backward(op, do, tensors, out, lse, scale, grads=None) -> grads`` where
``tensors`` are the op's tensor arguments in schema order, ``out`` is
contiguous with the query's shape and dtype, ``lse`` is float32
``[batch, heads, q_len]`` contiguous (float64 for float64 inputs), and each
gradient has the shape and dtype of its input. ``grads``, when given, is a
tuple of preallocated gradient tensors (any strides: views of one packed
gradient) that the backward writes and returns.

Dispatch is cached: :func:`resolve_backend` keys the choice on (op, device,
dtype, head dim, size class, requested backend, ``XCLIP_KERNELS_BACKEND``,
``TRITON_INTERPRET``). A backend's reasons may therefore depend on the sizes
only through their size class (the power-of-two class of batch*heads, q_len
and kv_len, and the exact message count). :func:`clear_dispatch_cache` forgets
the choices (after something that changes availability, in tests).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from . import reference

OPS = ("cross_frame_attn", "intra_frame_attn", "prompt_cross_attn")
BACKEND_NAMES = ("triton", "cuda", "torch")
# "auto" takes the first that can run the inputs. Triton before CUDA: the
# Triton kernels are the tuned ones (see benchmarks/RESULTS.md).
AUTO_ORDER = ("triton", "cuda", "torch")
ENV_VAR = "XCLIP_KERNELS_BACKEND"

_16BIT = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class OpInputs:
    """What dispatch needs to know about one call (computed by validation)."""

    op: str
    device: torch.device
    dtype: torch.dtype
    head_dim: int
    batch_heads: int  # B*H (or F*H): the flattened grid axis
    q_len: int
    kv_len: int  # keys per query row, messages included
    num_msg: int = 0  # M of intra_frame_attn


@dataclass(frozen=True)
class BackendStatus:
    name: str
    available: bool
    reason: str  # why not, or what it runs on

    def __bool__(self) -> bool:
        return self.available

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'} ({self.reason})"


class Backend:
    name: str = ""
    dtypes: tuple[torch.dtype, ...] = ()
    head_dims: tuple[int, ...] | None = None  # None: any head dim

    def status(self) -> BackendStatus:  # pragma: no cover - overridden
        raise NotImplementedError

    def device_reason(self, device: torch.device) -> str | None:  # pragma: no cover
        raise NotImplementedError

    def extra_reasons(self, inputs: OpInputs) -> list[str]:
        return []

    def not_supported_reasons(self, inputs: OpInputs) -> list[str]:
        st = self.status()
        reasons = [] if st.available else [st.reason]
        dev = self.device_reason(inputs.device)
        if dev:
            reasons.append(dev)
        if inputs.dtype not in self.dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in self.dtypes)
            reasons.append(f"dtype {str(inputs.dtype).replace('torch.', '')} not supported (supports {names})")
        if self.head_dims is not None and inputs.head_dim not in self.head_dims:
            reasons.append(f"head_dim {inputs.head_dim} not supported (supports {list(self.head_dims)})")
        if st.available:  # op-specific limits of a backend that can run at all
            reasons.extend(self.extra_reasons(inputs))
        return reasons

    def auto_reasons(self, inputs: OpInputs) -> list[str]:
        """Extra reasons not to pick this backend when the user asked for 'auto'."""
        return []

    def forward(self, op: str, tensors: Sequence[Tensor], scale: float):  # pragma: no cover
        raise NotImplementedError

    def backward(self, op, do, tensors, out, lse, scale, grads=None):  # pragma: no cover
        raise NotImplementedError


def _into(grads, computed):
    """Copy freshly computed gradients into the caller's preallocated ``grads`` (or pass them through)."""
    if grads is None:
        return tuple(computed)
    for g, c in zip(grads, computed):
        g.copy_(c)
    return tuple(grads)


class TorchBackend(Backend):
    """The eager reference: any device, any head dim, float64 included."""

    name = "torch"
    dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    def status(self) -> BackendStatus:
        return BackendStatus("torch", True, "eager PyTorch reference, any device")

    def device_reason(self, device):
        return None

    # CPU tensors go through PyTorch's CPU flash-attention kernels (reference.cpu_*),
    # other devices through the explicit eager definitions.
    _FWD = {op: (getattr(reference, f"cpu_{op}_fwd"), getattr(reference, f"{op}_fwd")) for op in OPS}
    _BWD = {op: (getattr(reference, f"cpu_{op}_bwd"), getattr(reference, f"{op}_bwd")) for op in OPS}

    def forward(self, op, tensors, scale):
        cpu, eager = self._FWD[op]
        return (cpu if tensors[0].device.type == "cpu" else eager)(*tensors, scale)

    def backward(self, op, do, tensors, out, lse, scale, grads=None):
        # The eager kernels cannot write into strided outputs: with ``grads``
        # the result is copied into them (one pass; the torch backend only).
        cpu, eager = self._BWD[op]
        return _into(grads, (cpu if do.device.type == "cpu" else eager)(do, *tensors, out, lse, scale))


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonBackend(Backend):
    """Triton kernels (xclip_kernels/triton/<op>.py): CUDA, or the CPU under TRITON_INTERPRET=1."""

    name = "triton"
    head_dims = None  # each kernel module declares its own limit

    @property
    def dtypes(self):  # the interpreter computes bfloat16 tl.dot wrongly
        return (torch.float32, torch.float16) if _interpreting() else (torch.float32, torch.float16, torch.bfloat16)

    @functools.lru_cache(maxsize=None)
    def _module(self, op: str):
        return importlib.import_module(f"xclip_kernels.triton.{op}")

    @functools.lru_cache(maxsize=None)
    def _import_reason(self) -> str | None:
        try:
            import triton  # noqa: F401
        except Exception as e:  # ImportError, or a broken install
            return f"triton cannot be imported ({type(e).__name__}: {e})"
        missing = []
        for op in OPS:
            try:
                self._module(op)
            except ImportError as e:
                missing.append(f"{op} ({e})")
        if missing:
            return "Triton kernels missing for " + ", ".join(missing)
        return None

    def status(self) -> BackendStatus:
        reason = self._import_reason()
        if reason:
            return BackendStatus("triton", False, reason)
        if _interpreting():
            return BackendStatus("triton", True, "TRITON_INTERPRET=1: CPU tensors through the Triton interpreter")
        if torch.cuda.is_available():
            return BackendStatus("triton", True, f"CUDA device {torch.cuda.get_device_name()}")
        return BackendStatus("triton", False, "no CUDA device (set TRITON_INTERPRET=1 to run on the CPU)")

    def device_reason(self, device):
        if device.type == "cuda" and torch.cuda.is_available() and not _interpreting():
            return None
        if device.type == "cpu" and _interpreting():
            return None
        if device.type == "cpu":
            return "CPU tensors need TRITON_INTERPRET=1"
        return f"device {device} not supported (CUDA tensors, or CPU under TRITON_INTERPRET=1)"

    def auto_reasons(self, inputs):
        if inputs.device.type == "cpu":  # the interpreter is a testing tool, far slower than eager
            return ["CPU tensors run through the Triton interpreter only when backend='triton' is asked for"]
        return []

    def extra_reasons(self, inputs):
        mod = self._module(inputs.op)
        return list(mod.not_supported_reasons(inputs)) if hasattr(mod, "not_supported_reasons") else []

    @functools.lru_cache(maxsize=None)
    def _takes_grads(self, op: str) -> bool:
        return "grads" in inspect.signature(self._module(op).backward).parameters

    def forward(self, op, tensors, scale):
        return self._module(op).forward(*tensors, scale)

    def backward(self, op, do, tensors, out, lse, scale, grads=None):
        mod = self._module(op)
        if grads is None:
            return mod.backward(do, *tensors, out, lse, scale)
        if self._takes_grads(op):  # the kernels write into the caller's (strided) views
            return tuple(mod.backward(do, *tensors, out, lse, scale, grads=grads))
        return _into(grads, mod.backward(do, *tensors, out, lse, scale))  # kernels without grads=: one copy


class CudaBackend(Backend):
    """CUDA C++ kernels from the compiled extension xclip_kernels._C."""

    name = "cuda"
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    head_dims = (32, 64, 80, 96, 128)

    def status(self) -> BackendStatus:
        from . import _extension

        if _extension.error is not None:
            return BackendStatus("cuda", False, _extension.error)
        missing = [op for op in OPS if not _extension.has_cuda_kernel(f"{op}_fwd_cuda")]
        if missing:
            return BackendStatus("cuda", False, "extension built without CUDA kernels for " + ", ".join(missing))
        if not torch.cuda.is_available():
            return BackendStatus("cuda", False, "extension built, but no CUDA device is visible")
        return BackendStatus("cuda", True, f"CUDA device {torch.cuda.get_device_name()}")

    def device_reason(self, device):
        return None if device.type == "cuda" else f"device {device} not supported (CUDA tensors only)"

    def forward(self, op, tensors, scale):
        return tuple(getattr(torch.ops.xclip, f"{op}_fwd_cuda")(*tensors, scale))

    def backward(self, op, do, tensors, out, lse, scale, grads=None):
        # The C++ ops allocate their outputs; with ``grads`` the result is copied
        # into the caller's views (one extra pass; csrc/ takes no output tensors yet).
        return _into(grads, getattr(torch.ops.xclip, f"{op}_bwd_cuda")(do, *tensors, out, lse, scale))


BACKENDS: dict[str, Backend] = {b.name: b for b in (TritonBackend(), CudaBackend(), TorchBackend())}


def available_backends() -> dict[str, BackendStatus]:
    """Each backend's status here: ``{name: BackendStatus(name, available, reason)}``."""
    return {name: b.status() for name, b in BACKENDS.items()}


def _check_name(name: str, where: str) -> str:
    name = name.strip().lower()
    if name not in BACKENDS and name != "auto":
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {list(BACKENDS)} or 'auto'")
    return name


def select_backend(inputs: OpInputs, requested: str | None) -> str:
    """Resolve ``requested`` (None/'auto'/a name) to a backend name that can run ``inputs``."""
    if requested is None:
        env = os.environ.get(ENV_VAR, "").strip()
        requested = _check_name(env, f"environment variable {ENV_VAR}") if env else "auto"
    else:
        requested = _check_name(requested, f"{inputs.op}: argument 'backend'")
    names = AUTO_ORDER if requested == "auto" else (requested,)
    reasons = {}
    for name in names:
        r = BACKENDS[name].not_supported_reasons(inputs)
        if requested == "auto":
            r = r + BACKENDS[name].auto_reasons(inputs)
        if not r:
            return name
        reasons[name] = r
    detail = "; ".join(f"{n}: {', '.join(r)}" for n, r in reasons.items())
    what = f"backend {requested!r}" if requested != "auto" else "no backend"
    raise ValueError(
        f"{inputs.op}: {what} cannot run these inputs "
        f"(device {inputs.device}, dtype {str(inputs.dtype).replace('torch.', '')}, "
        f"head_dim {inputs.head_dim}): {detail}"
    )


# --- the cached dispatch decision ---------------------------------------------------

_CACHE: dict[tuple, str] = {}
_environ = os.environ


def clear_dispatch_cache() -> None:
    """Forget every cached backend choice (after a change to what is available)."""
    _CACHE.clear()


def resolve_backend(op: str, device: torch.device, dtype: torch.dtype, sizes: tuple, requested: str | None) -> str:
    """:func:`select_backend` for validated inputs, cached per dispatch key.

    ``sizes`` is ``(head_dim, batch_heads, q_len, kv_len, num_msg)``. The key
    holds the environment variables read at call time, so changing
    ``XCLIP_KERNELS_BACKEND`` (or ``TRITON_INTERPRET``) takes effect on the
    next call. A request that cannot run raises ``ValueError`` and is not cached.
    """
    D, bh, lq, lk, m = sizes
    try:
        key = (
            op, device, dtype, D, bh.bit_length(), lq.bit_length(), lk.bit_length(), m, requested,
            _environ.get(ENV_VAR) if not requested else None, _environ.get("TRITON_INTERPRET"),
        )
        name = _CACHE.get(key)
    except (AttributeError, TypeError):  # symbolic sizes (tracing with dynamic shapes): not cached
        key = name = None
    if name is None:
        name = select_backend(OpInputs(op, device, dtype, D, bh, lq, lk, m), None if requested == "" else requested)
        if key is not None:
            _CACHE[key] = name
    return name
