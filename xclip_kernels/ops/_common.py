"""Shared machinery of the three ops: validation helpers and the custom-op frame.

Each op ``X`` is registered in the ``xclip`` namespace as three operators:

- ``xclip::X_fwd(tensors..., float scale, str backend) -> (Tensor out, Tensor lse)``
  with a fake kernel, a FLOP formula and autograd (its backward calls ``X_bwd``);
- ``xclip::X_bwd(Tensor do, tensors..., Tensor out, Tensor lse, float scale,
  str backend) -> (grads...)`` with a fake kernel and a FLOP formula;
- ``xclip::X(tensors..., *, float? scale=None, str? backend=None) -> Tensor``,
  the public op (CompositeImplicitAutograd): validates, resolves the backend
  and calls ``X_fwd``. ``torch.compile`` sees through it to ``X_fwd``.

This is flash-attention's split (forward and backward as separate custom ops)
expressed with ``torch.library`` so that ``torch.ops.xclip.X`` itself is
differentiable, traceable and passes ``torch.library.opcheck``.

Packed variants (``xclip::X_packed``, see :class:`PackedSpec`) take the packed
projection (``qkv [..., 3, H, D]``) itself; their backward allocates the packed
gradient once and hands its views to the backend as ``grads=``, so autograd
never stacks per-tensor gradients.

The host path. The Python function (``xk.X`` / ``op(...)``) validates once
(a fast check of shapes, dtypes and devices; the detailed ``describe`` only
when that check fails, to word the error), resolves the backend through the
dispatch cache (:func:`xclip_kernels.backends.resolve_backend`) and then, in
plain eager mode, runs the backend through one ``torch.autograd.Function``
(:class:`_EagerAttention`), without the dispatcher: a ``torch.library``
autograd kernel costs tens of microseconds per call. Whenever something must
see the op itself (``torch.compile``, a ``TorchDispatchMode`` such as
``FlopCounterMode`` or ``FakeTensorMode``, a tensor subclass or a
``__torch_function__`` mode, functorch transforms, ``torch.jit.trace``) the call goes through
``torch.ops.xclip.X`` as before. Both paths run the same backend functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from ..backends import BACKENDS, OpInputs, resolve_backend

_lib = torch.library.Library("xclip", "FRAGMENT")

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_MSG = 8


def _fmt_dtype(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


# --- validation ----------------------------------------------------------------


def check_tensor(op: str, name: str, x, ranks: Sequence[int], layout: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{op}: argument '{name}' must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(
            f"{op}: argument '{name}' must be {want} {layout}, got a {x.dim()}-D tensor of shape {tuple(x.shape)}"
        )


def check_same(op: str, ref_name: str, ref: Tensor, others: dict[str, Tensor]) -> None:
    """dtype and device of every tensor must equal those of ``ref``."""
    if ref.dtype not in _DTYPES:
        raise ValueError(
            f"{op}: argument '{ref_name}' has dtype {_fmt_dtype(ref.dtype)}, "
            f"expected one of {[_fmt_dtype(d) for d in _DTYPES]}"
        )
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise ValueError(
                f"{op}: argument '{name}' has dtype {_fmt_dtype(t.dtype)}, expected {_fmt_dtype(ref.dtype)} "
                f"(the dtype of '{ref_name}')"
            )
        if t.device != ref.device:
            raise ValueError(
                f"{op}: argument '{name}' is on device {t.device}, expected {ref.device} (the device of '{ref_name}')"
            )


def check_dim(op: str, name: str, x: Tensor, dim: int, expected: int, what: str) -> None:
    if x.shape[dim] != expected:
        raise ValueError(
            f"{op}: argument '{name}' has shape {tuple(x.shape)}: {what} is {x.shape[dim]}, expected {expected}"
        )


def check_head_dim(op: str, name: str, x: Tensor) -> None:
    if x.shape[-1] == 0:
        raise ValueError(f"{op}: argument '{name}' has an empty head dim (shape {tuple(x.shape)}), expected head_dim >= 1")


def resolve_scale(op: str, scale, head_dim: int) -> float:
    if scale is None:
        return head_dim**-0.5
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"{op}: argument 'scale' must be a finite float or None, got {scale!r}")
    return float(scale)


# --- the custom-op frame ----------------------------------------------------------

_has_torch_function = torch._C._has_torch_function
_dispatch_modes = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_is_compiling = torch.compiler.is_compiling
_jit_tracing = torch._C._get_tracing_state


def _plain_eager(tensors) -> bool:
    """True when nothing needs to see the custom op: no compile, mode, subclass, transform or jit trace."""
    return not (_is_compiling() or _dispatch_modes() or _has_torch_function(tensors) or _functorch_active()
                or _jit_tracing())


@dataclass(frozen=True)
class PackedSpec:
    """How a packed variant's arguments map onto its base op's tensors.

    ``parts[i]`` is the number of tensors packed along dim ``dim`` of argument
    ``i`` (1: the argument is passed as is).
    """

    base: str
    parts: tuple[int, ...]
    dim: int = 2

    def unpack(self, args) -> tuple:
        out = []
        for a, n in zip(args, self.parts):
            if n == 1:
                out.append(a)
            else:
                out.extend(a.unbind(self.dim))
        return tuple(out)


class AttentionOp:
    """Registers ``xclip::<name>``, ``<name>_fwd`` and ``<name>_bwd`` for one op.

    ``describe(*args) -> OpInputs`` validates the tensor arguments (raising a
    worded ValueError) and describes them for dispatch. ``sizes(*args)`` is the
    hot-path check: ``(head_dim, batch_heads, q_len, kv_len, num_msg)`` of
    valid inputs, else it calls ``describe`` to raise. ``out_shape(*args)``
    gives the output's shape; ``lse_shape`` likewise. ``matmul_flops(*shapes)``
    is the FLOP count of one ``q @ k.T`` (equal to that of ``p @ v``), from the
    shapes of the base op's tensors. ``packed`` makes this a packed variant
    of the op ``packed.base``.
    """

    def __init__(
        self,
        name: str,
        arg_names: Sequence[str],
        describe: Callable[..., OpInputs],
        sizes: Callable[..., tuple],
        out_shape: Callable[..., tuple],
        lse_shape: Callable[..., tuple],
        matmul_flops: Callable[..., int],
        packed: PackedSpec | None = None,
    ) -> None:
        self.name = name
        self.arg_names = tuple(arg_names)
        self.n = len(arg_names)
        self.describe = describe
        self.sizes = sizes
        self.out_shape = out_shape
        self.lse_shape = lse_shape
        self.matmul_flops = matmul_flops
        self.packed = packed
        self.kernel = packed.base if packed else name  # the op name the backends implement
        self.unpack = packed.unpack if packed else (lambda args: tuple(args))

        targs = ", ".join(f"Tensor {a}" for a in self.arg_names)
        grads = ", ".join(f"Tensor d{a}" for a in self.arg_names)
        _lib.define(f"{name}_fwd({targs}, float scale, str backend) -> (Tensor out, Tensor lse)")
        _lib.define(
            f"{name}_bwd(Tensor grad_out, {targs}, Tensor out, Tensor lse, float scale, str backend) -> ({grads})"
        )
        _lib.define(f"{name}({targs}, *, float? scale=None, str? backend=None) -> Tensor")
        _lib.impl(f"{name}_fwd", self._fwd_impl, "CompositeExplicitAutograd")
        _lib.impl(f"{name}_bwd", self._bwd_impl, "CompositeExplicitAutograd")
        _lib.impl(name, self._public_impl, "CompositeImplicitAutograd")
        torch.library.register_fake(f"xclip::{name}_fwd", self._fwd_fake, lib=_lib)
        torch.library.register_fake(f"xclip::{name}_bwd", self._bwd_fake, lib=_lib)
        torch.library.register_autograd(
            f"xclip::{name}_fwd", self._autograd_bwd, setup_context=self._setup_context, lib=_lib
        )
        if not packed and hasattr(torch.ops.xclip, f"{name}_fwd_cuda"):  # the compiled extension's kernel ops
            torch.library.register_fake(f"xclip::{name}_fwd_cuda", self._fwd_fake, lib=_lib)
            torch.library.register_fake(f"xclip::{name}_bwd_cuda", self._bwd_fake, lib=_lib)
        self.fwd_op = getattr(torch.ops.xclip, f"{name}_fwd")
        self.bwd_op = getattr(torch.ops.xclip, f"{name}_bwd")
        self.op = getattr(torch.ops.xclip, name)

        n = self.n

        def _base_shapes(args):
            if not packed:
                return args[:n]
            out = []
            for shape, parts in zip(args[:n], packed.parts):
                if parts == 1:
                    out.append(tuple(shape))
                else:
                    shape = tuple(shape)
                    out.extend([shape[: packed.dim] + shape[packed.dim + 1 :]] * parts)
            return out

        @register_flop_formula(self.fwd_op)
        def _fwd_flops(*args, out_shape=None, **kwargs) -> int:
            return 2 * self.matmul_flops(*_base_shapes(args[:n]))

        @register_flop_formula(self.bwd_op)
        def _bwd_flops(*args, out_shape=None, **kwargs) -> int:
            # score recompute, dP, dV, dQ, dK: as torch counts SDPA's backward
            return 5 * self.matmul_flops(*_base_shapes(args[1 : 1 + n]))

    # The public function (SPEC.md): keyword-only scale and backend.
    def __call__(self, *tensors, scale=None, backend=None) -> Tensor:
        if len(tensors) != self.n:
            raise TypeError(f"{self.name}() takes {self.n} tensors ({', '.join(self.arg_names)}), got {len(tensors)}")
        if _is_compiling():  # traced: the op in the graph, resolved when the graph is built
            self.sizes(*tensors)
            return self.op(*tensors, scale=scale, backend=backend)
        sz = self.sizes(*tensors)  # the one validation of this call
        scale = sz[0] ** -0.5 if scale is None else resolve_scale(self.name, scale, sz[0])
        q = tensors[0]
        name = resolve_backend(self.kernel, q.device, q.dtype, sz, backend)
        if not sz[1] or not sz[2] or not _plain_eager(tensors):
            return self.op(*tensors, scale=scale, backend=name)
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            return _EagerAttention.apply((self, name, scale), *tensors)
        return BACKENDS[name].forward(self.kernel, self.unpack(tensors), scale)[0]

    def _resolve(self, tensors, scale, backend) -> tuple[tuple, float, str]:
        sz = self.sizes(*tensors)
        scale = resolve_scale(self.name, scale, sz[0])
        q = tensors[0]
        return sz, scale, resolve_backend(self.kernel, q.device, q.dtype, sz, backend or None)

    def _public_impl(self, *args, scale=None, backend=None):
        tensors = args[: self.n]
        if len(args) > self.n:  # the dispatcher may pass them positionally
            scale, backend = (tuple(args[self.n :]) + (backend,))[:2]
        _, scale, name = self._resolve(tensors, scale, backend)
        out, _ = self.fwd_op(*tensors, scale, name)
        return out

    def _fwd_impl(self, *args):
        tensors, scale, backend = args[: self.n], args[self.n], args[self.n + 1]
        sz, scale, name = self._resolve(tensors, scale, backend)
        if not sz[1] or not sz[2]:
            return self._fwd_fake(*args)
        out, lse = BACKENDS[name].forward(self.kernel, self.unpack(tensors), scale)
        return out.contiguous(), lse.contiguous()

    def _fwd_fake(self, *args):
        tensors = args[: self.n]
        self.sizes(*tensors)
        q = tensors[0]
        stat = torch.float64 if q.dtype == torch.float64 else torch.float32
        out = q.new_zeros(self.out_shape(*tensors))
        lse = torch.zeros(self.lse_shape(*tensors), dtype=stat, device=q.device)
        return out, lse

    def backward(self, name: str, do: Tensor, tensors, out: Tensor, lse: Tensor, scale: float) -> tuple:
        """The gradients of every tensor argument, from backend ``name`` (inputs already validated)."""
        backend = BACKENDS[name]
        if self.packed is None:
            return tuple(backend.backward(self.kernel, do, tensors, out, lse, scale))
        # one packed gradient per packed argument, written through its views by the backend
        packed = tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in tensors)
        backend.backward(self.kernel, do, self.unpack(tensors), out, lse, scale, grads=self.unpack(packed))
        return packed

    def _bwd_impl(self, do, *args):
        tensors = args[: self.n]
        out, lse, scale, backend = args[self.n : self.n + 4]
        sz, scale, name = self._resolve(tensors, scale, backend)
        if not sz[1] or not sz[2]:
            return self._bwd_fake(do, *args)
        grads = tuple(g.contiguous() for g in self.backward(name, do, tensors, out, lse, scale))
        return grads if self.n > 1 else grads[0]  # a one-tensor schema returns a Tensor, not a tuple

    def _bwd_fake(self, do, *args):
        grads = tuple(torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in args[: self.n])
        return grads if self.n > 1 else grads[0]

    def _setup_context(self, ctx, inputs, output):
        tensors, scale, backend = inputs[: self.n], inputs[self.n], inputs[self.n + 1]
        out, lse = output
        ctx.save_for_backward(*tensors, out, lse)
        ctx.scale = scale
        ctx.backend = backend
        ctx.mark_non_differentiable(lse)

    def _autograd_bwd(self, ctx, grad_out, grad_lse):
        saved = ctx.saved_tensors
        tensors, out, lse = saved[: self.n], saved[self.n], saved[self.n + 1]
        if grad_out is None:
            grad_out = torch.zeros_like(out)
        grads = self.bwd_op(grad_out, *tensors, out, lse, ctx.scale, ctx.backend)
        if self.n == 1:
            grads = (grads,)
        needs = ctx.needs_input_grad
        return tuple(g if needs[i] else None for i, g in enumerate(grads)) + (None, None)


class _EagerAttention(torch.autograd.Function):
    """The plain-eager path of every op: the resolved backend's forward and backward, no dispatcher.

    ``plan`` is ``(op, backend name, scale)``: one non-tensor argument (each costs the autograd
    engine a little on every call).
    """

    @staticmethod
    def forward(ctx, plan, *tensors):
        op, name, scale = plan
        out, lse = BACKENDS[name].forward(op.kernel, op.unpack(tensors), scale)
        ctx.save_for_backward(*tensors, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        *tensors, out, lse = ctx.saved_tensors
        op, name, scale = ctx.plan
        return (None, *op.backward(name, do, tensors, out, lse, scale))
