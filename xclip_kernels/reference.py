"""Eager PyTorch definitions of the three X-CLIP attention ops.

These are the oracle every kernel is tested against and the `torch` backend
(the CPU path). Layout is ``[batch, seq, heads, head_dim]`` everywhere.

Each op has a forward returning ``(out, lse)`` and a backward returning the
input gradients, both written explicitly (no autograd inside), so they can run
inside a custom-op implementation. ``lse`` is the per-row log-sum-exp of the
scaled scores, shape ``[batch, heads, q_len]`` in float32 (float64 for float64
inputs). Statistics and accumulation are in float32 for 16-bit inputs.

The ``cpu_*`` functions compute the same on CPU tensors through PyTorch's
CPU flash-attention kernels (the kernels behind
``torch.nn.functional.scaled_dot_product_attention``, called through the aten
ops that also return the log-sum-exp and take it back in the backward): one
fused kernel instead of explicit matmuls, no float32 copies of the inputs,
inputs read in place through their strides. They are the `torch` backend's
CPU path; the explicit definitions above them stay the oracle.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "attention_fwd",
    "attention_bwd",
    "cross_frame_attn_fwd",
    "cross_frame_attn_bwd",
    "intra_frame_attn_fwd",
    "intra_frame_attn_bwd",
    "prompt_cross_attn_fwd",
    "prompt_cross_attn_bwd",
    "cross_frame_attn",
    "intra_frame_attn",
    "prompt_cross_attn",
    "cpu_attention_fwd",
    "cpu_attention_bwd",
    "cpu_cross_frame_attn_fwd",
    "cpu_cross_frame_attn_bwd",
    "cpu_intra_frame_attn_fwd",
    "cpu_intra_frame_attn_bwd",
    "cpu_prompt_cross_attn_fwd",
    "cpu_prompt_cross_attn_bwd",
]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bhld(x: Tensor, acc: torch.dtype) -> Tensor:
    """[B, L, H, D] -> [B, H, L, D] in the accumulation dtype (a view when possible)."""
    return x.to(acc).transpose(1, 2)


def attention_fwd(
    q: Tensor, ks: Sequence[Tensor], vs: Sequence[Tensor], scale: float
) -> tuple[Tensor, Tensor]:
    """softmax(scale * q @ cat(ks).T) @ cat(vs), the concatenation along the key axis.

    q: [B, Lq, H, D]; each k/v: [B, Lk_i, H, D]. Returns out [B, Lq, H, D] in
    q's dtype (contiguous) and lse [B, H, Lq] in the accumulation dtype.
    """
    acc = _acc_dtype(q.dtype)
    qh = _bhld(q, acc)
    k = torch.cat([_bhld(k, acc) for k in ks], dim=2)
    v = torch.cat([_bhld(v, acc) for v in vs], dim=2)
    s = torch.matmul(qh, k.transpose(-1, -2)) * scale
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - lse.unsqueeze(-1))
    o = torch.matmul(p, v)
    return o.transpose(1, 2).to(q.dtype).contiguous(), lse.contiguous()


def attention_bwd(
    do: Tensor,
    q: Tensor,
    ks: Sequence[Tensor],
    vs: Sequence[Tensor],
    o: Tensor,
    lse: Tensor,
    scale: float,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Gradients of :func:`attention_fwd`; dks/dvs are split back per source."""
    acc = _acc_dtype(q.dtype)
    qh = _bhld(q, acc)
    k = torch.cat([_bhld(k, acc) for k in ks], dim=2)
    v = torch.cat([_bhld(v, acc) for v in vs], dim=2)
    doh = _bhld(do, acc)
    oh = _bhld(o, acc)
    s = torch.matmul(qh, k.transpose(-1, -2)) * scale
    p = torch.exp(s - lse.to(acc).unsqueeze(-1))
    dv = torch.matmul(p.transpose(-1, -2), doh)
    dp = torch.matmul(doh, v.transpose(-1, -2))
    delta = (doh * oh).sum(-1, keepdim=True)
    ds = p * (dp - delta) * scale
    dq = torch.matmul(ds, k)
    dk = torch.matmul(ds.transpose(-1, -2), qh)
    sizes = [kk.shape[1] for kk in ks]
    dks = [t.transpose(1, 2).to(kk.dtype).contiguous() for t, kk in zip(dk.split(sizes, dim=2), ks)]
    dvs = [t.transpose(1, 2).to(vv.dtype).contiguous() for t, vv in zip(dv.split(sizes, dim=2), vs)]
    return dq.transpose(1, 2).to(q.dtype).contiguous(), dks, dvs


# --- (a) cross-frame attention over the T message tokens of each video -------


def cross_frame_attn_fwd(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    return attention_fwd(q, [k], [v], scale)


def cross_frame_attn_bwd(do, q, k, v, o, lse, scale):
    dq, (dk,), (dv,) = attention_bwd(do, q, [k], [v], o, lse, scale)
    return dq, dk, dv


# --- (b) intra-frame attention with appended message keys --------------------


def intra_frame_attn_fwd(q, k, v, k_msg, v_msg, scale):
    return attention_fwd(q, [k, k_msg], [v, v_msg], scale)


def intra_frame_attn_bwd(do, q, k, v, k_msg, v_msg, o, lse, scale):
    dq, (dk, dkm), (dv, dvm) = attention_bwd(do, q, [k, k_msg], [v, v_msg], o, lse, scale)
    return dq, dk, dv, dkm, dvm


# --- (c) video-conditioned prompt cross-attention -----------------------------


def _prompt_q(q: Tensor, batch: int) -> Tensor:
    return q.unsqueeze(0).expand(batch, *q.shape) if q.dim() == 3 else q


def prompt_cross_attn_fwd(q, k, v, scale):
    return attention_fwd(_prompt_q(q, k.shape[0]), [k], [v], scale)


def prompt_cross_attn_bwd(do, q, k, v, o, lse, scale):
    dq, (dk,), (dv,) = attention_bwd(do, _prompt_q(q, k.shape[0]), [k], [v], o, lse, scale)
    if q.dim() == 3:  # shared queries: their gradient is the sum over videos
        dq = dq.to(_acc_dtype(q.dtype)).sum(0).to(q.dtype)
    return dq, dk, dv


# --- the CPU path: PyTorch's CPU flash-attention kernels ----------------------

_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default
_flash_cpu_bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward.default


def _heads(x: Tensor) -> Tensor:
    """[B, L, H, D] -> [B, H, L, D] view; the kernels need a unit head-dim stride."""
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        x = x.contiguous()
    return x.transpose(1, 2)


def _keys(xs: Sequence[Tensor]) -> Tensor:
    # one key source is read in place; the message keys of (b) are appended (a
    # copy of k and v: on the CPU this measured faster than merging a second
    # softmax term into the output, see benchmarks/RESULTS.md)
    return _heads(xs[0]) if len(xs) == 1 else torch.cat(xs, dim=1).transpose(1, 2)


def cpu_attention_fwd(q: Tensor, ks: Sequence[Tensor], vs: Sequence[Tensor], scale: float) -> tuple[Tensor, Tensor]:
    """:func:`attention_fwd` through the CPU flash kernel: out [B, Lq, H, D] contiguous, lse [B, H, Lq]."""
    o, lse = _flash_cpu(_heads(q), _keys(ks), _keys(vs), scale=scale)
    # the kernel usually writes o in [B, Lq, H, D] order (then this is no copy); not for every query layout
    return o.transpose(1, 2).contiguous(), lse


def cpu_attention_bwd(do, q, ks, vs, o, lse, scale):
    """:func:`attention_bwd` through the CPU flash kernel's backward; dks/dvs split back per source."""
    dq, dk, dv = _flash_cpu_bwd(_heads(do), _heads(q), _keys(ks), _keys(vs), _heads(o), lse, 0.0, False, scale=scale)
    dq, dk, dv = dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
    if len(ks) == 1:
        return dq, [dk], [dv]
    n = ks[0].shape[1]  # two sources: (b)'s patch keys and message keys
    return dq, [dk[:, :n], dk[:, n:]], [dv[:, :n], dv[:, n:]]


def cpu_cross_frame_attn_fwd(q, k, v, scale):
    return cpu_attention_fwd(q, [k], [v], scale)


def cpu_cross_frame_attn_bwd(do, q, k, v, o, lse, scale):
    dq, (dk,), (dv,) = cpu_attention_bwd(do, q, [k], [v], o, lse, scale)
    return dq, dk, dv


def cpu_intra_frame_attn_fwd(q, k, v, k_msg, v_msg, scale):
    return cpu_attention_fwd(q, [k, k_msg], [v, v_msg], scale)


def cpu_intra_frame_attn_bwd(do, q, k, v, k_msg, v_msg, o, lse, scale):
    dq, (dk, dkm), (dv, dvm) = cpu_attention_bwd(do, q, [k, k_msg], [v, v_msg], o, lse, scale)
    return dq, dk, dv, dkm, dvm


def cpu_prompt_cross_attn_fwd(q, k, v, scale):
    return cpu_attention_fwd(_prompt_q(q, k.shape[0]), [k], [v], scale)  # shared q: a stride-0 view


def cpu_prompt_cross_attn_bwd(do, q, k, v, o, lse, scale):
    dq, (dk,), (dv,) = cpu_attention_bwd(do, _prompt_q(q, k.shape[0]), [k], [v], o, lse, scale)
    if q.dim() == 3:
        dq = dq.to(_acc_dtype(q.dtype)).sum(0).to(q.dtype)
    return dq, dk, dv


# --- plain differentiable functions (autograd through eager ops) -------------


def _default_scale(q: Tensor, scale: float | None) -> float:
    return q.shape[-1] ** -0.5 if scale is None else scale


def cross_frame_attn(q, k, v, scale=None):
    """Differentiable eager definition of (a); used as the oracle in tests."""
    return _attention_autograd(q, [k], [v], _default_scale(q, scale))


def intra_frame_attn(q, k, v, k_msg, v_msg, scale=None):
    """Differentiable eager definition of (b)."""
    return _attention_autograd(q, [k, k_msg], [v, v_msg], _default_scale(q, scale))


def prompt_cross_attn(q, k, v, scale=None):
    """Differentiable eager definition of (c); a 3-D q is shared by all videos."""
    return _attention_autograd(_prompt_q(q, k.shape[0]), [k], [v], _default_scale(q, scale))


def _attention_autograd(q, ks, vs, scale):
    acc = _acc_dtype(q.dtype)
    qh = _bhld(q, acc)
    k = torch.cat([_bhld(k, acc) for k in ks], dim=2)
    v = torch.cat([_bhld(v, acc) for v in vs], dim=2)
    p = torch.softmax(torch.matmul(qh, k.transpose(-1, -2)) * scale, dim=-1)
    return torch.matmul(p, v).transpose(1, 2).to(q.dtype)
