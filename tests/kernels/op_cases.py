"""Shared helpers of the op tests: an independent float64 oracle, input
builders (contiguous, packed-projection views, sequence-first, NaN-padded) and
the tolerance rule of CONVENTIONS.md.

The oracle below is written here on purpose, independently of
``xclip_kernels.reference``: plain loops over batch and head in float64.
"""

from __future__ import annotations

import math

import torch

import xclip_kernels as xk

OPS = ("cross_frame_attn", "intra_frame_attn", "prompt_cross_attn")
ARGS = {
    "cross_frame_attn": ("q", "k", "v"),
    "intra_frame_attn": ("q", "k", "v", "k_msg", "v_msg"),
    "prompt_cross_attn": ("q", "k", "v"),
}


def _plain_qkv(op: str, t):
    """(q, k, v) of plain attention equivalent to ``op``: messages concatenated, a shared q expanded."""
    if op == "intra_frame_attn":
        q, k, v, km, vm = t
        return q, torch.cat([k, km], 1), torch.cat([v, vm], 1)
    q, k, v = t
    if op == "prompt_cross_attn" and q.dim() == 3:
        q = q.unsqueeze(0).expand(k.shape[0], -1, -1, -1)
    return q, k, v


def oracle(op: str, tensors, scale=None):
    """float64 output of ``op`` from first principles (per batch, per head)."""
    q, k, v = _plain_qkv(op, [x.detach().double() for x in tensors])
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    B, Lq, H, D = q.shape
    out = torch.empty(B, Lq, H, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            s = (q[b, :, h] @ k[b, :, h].T) * scale
            s = s - s.max(dim=-1, keepdim=True).values
            p = s.exp()
            p = p / p.sum(-1, keepdim=True)
            out[b, :, h] = p @ v[b, :, h]
    return out


def eager_same_dtype(op: str, tensors, scale=None):
    """What a plain eager implementation computes in the inputs' own dtype
    (no upcast): the yardstick of the tolerance rule."""
    q, k, v = _plain_qkv(op, list(tensors))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    p = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)
    return (p @ vh).transpose(1, 2)


def eager_out_and_grads(op: str, tensors, do, scale=None):
    """Output (detached) and input gradients of :func:`eager_same_dtype` for upstream gradient ``do``."""
    xs = [t.detach().clone().requires_grad_(True) for t in tensors]
    out = eager_same_dtype(op, xs, scale)
    return out.detach(), torch.autograd.grad(out, xs, do)


def shapes(op: str, dims: dict) -> list[tuple]:
    """Tensor shapes of ``op`` for sizes in ``dims`` (keys B/T, F/N/M, B/K/N, H, D)."""
    H, D = dims["H"], dims["D"]
    if op == "cross_frame_attn":
        s = (dims["B"], dims["T"], H, D)
        return [s, s, s]
    if op == "intra_frame_attn":
        s = (dims["F"], dims["N"], H, D)
        m = (dims["F"], dims["M"], H, D)
        return [s, s, s, m, m]
    q = (dims["K"], H, D) if dims.get("shared") else (dims["B"], dims["K"], H, D)
    kv = (dims["B"], dims["N"], H, D)
    return [q, kv, kv]


def make_inputs(op, dims, dtype, device, layout="contiguous", seed=0, nan_pad=False, requires_grad=False):
    """Fresh seeded random inputs in one of the layouts:

    - ``contiguous``;
    - ``packed``: q/k/v (and k_msg/v_msg) are unbound views of one
      ``[..., 3, H, D]`` projection (strided, no copy), as a fused in_proj gives;
    - ``seqfirst``: built ``[L, B, H, D]`` and transposed to ``[B, L, H, D]``;
    - ``nan_pad`` (with any layout but packed): each tensor is a view into a
      larger NaN-filled buffer (extra rows and head-dim columns), so a kernel
      reading out of bounds produces NaN.
    """
    g = torch.Generator().manual_seed(seed)
    sh = shapes(op, dims)

    def rand(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)

    if layout == "packed":
        tensors = []
        if op == "intra_frame_attn":
            qkv = rand(sh[0][:2] + (3,) + sh[0][2:]).to(device)
            kv_m = rand(sh[3][:2] + (2,) + sh[3][2:]).to(device)
            tensors = list(qkv.unbind(2)) + list(kv_m.unbind(2))
        elif op == "cross_frame_attn":
            qkv = rand(sh[0][:2] + (3,) + sh[0][2:]).to(device)
            tensors = list(qkv.unbind(2))
        else:
            q = rand(sh[0]).to(device)
            kv = rand(sh[1][:2] + (2,) + sh[1][2:]).to(device)
            tensors = [q] + list(kv.unbind(2))
    else:
        tensors = []
        for s in sh:
            if layout == "seqfirst" and len(s) == 4:
                base_shape = (s[1], s[0], s[2], s[3])
            else:
                base_shape = s
            if nan_pad:  # padded along the sequence and head-dim axes, data in the middle
                padded_axes = (len(base_shape) - 3, len(base_shape) - 1)
                padded = tuple(n + 2 * (i in padded_axes) for i, n in enumerate(base_shape))
                sl = tuple(slice(1, 1 + n) if i in padded_axes else slice(0, n) for i, n in enumerate(base_shape))
                buf = torch.full(padded, float("nan"), dtype=dtype)
                buf[sl] = rand(base_shape)
                x = buf.to(device)[sl]
            else:
                x = rand(base_shape).to(device)
            if layout == "seqfirst" and len(s) == 4:
                x = x.transpose(0, 1)
            tensors.append(x)
    if requires_grad:
        tensors = [t.detach().requires_grad_(True) for t in tensors]
    return tensors


def run_op(op: str, tensors, **kw):
    return getattr(xk, op)(*tensors, **kw)


def max_err(a, b) -> float:
    d = (a.double() - b.double()).abs()
    if torch.isnan(d).any():
        return math.inf
    return d.max().item() if d.numel() else 0.0


def assert_close_rule(name, got, ref64, eager, atol):
    """CONVENTIONS.md: |got - ref64| <= 2 * |eager - ref64| + atol, NaN never passes."""
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(got).any(), f"{name}: NaN in result"
    err = max_err(got, ref64)
    base = max_err(eager, ref64)
    assert err <= 2 * base + atol, f"{name}: max error {err:.3g} > 2 * eager error {base:.3g} + atol {atol:.1g}"


ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.5e-2}
