"""Triton kernels of ``intra_frame_attn``: each frame's N patch queries attend to
its N patch keys plus its M message keys.

q, k, v ``[F, N, H, D]``; k_msg, v_msg ``[F, M, H, D]`` -> ``[F, N, H, D]``.

The two key sources are read from their own tensors: the forward and the dQ
kernel walk the N patch keys in BN-key steps and then take the M message
keys as one extra small tile (``BMSG`` = M padded to 16), so
``cat(k, k_msg)`` is never built; only the N patch queries get output rows
(no row for the message token). dK/dV and dK_msg/dV_msg are two launches of
the same per-source kernel, each writing straight into its own gradient.
"""

from __future__ import annotations

import torch
import triton

from . import _common as C


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def _bmsg(M: int) -> int:
    return max(16, triton.next_power_of_2(M))


def forward(q, k, v, k_msg, v_msg, scale):
    F, N, H, D = q.shape
    M = k_msg.shape[1]
    BH = F * H
    out = C.empty((F, N, H, D), q.dtype, q.device)
    lse = C.empty((F, H, N), torch.float32, q.device)
    bd = C.block_d(D)
    args = (q, k, v, k_msg, v_msg, out, lse,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k_msg), *C.strides4(v_msg),
            *C.strides4(out), BH, H, N, N, M, D, scale)
    fixed = dict(G=1, BMSG=_bmsg(M), BD=bd, HAS_MSG=True, PREC=C.dot_precision(q.dtype))
    grid = lambda m: (BH, triton.cdiv(N, m["BM"]))  # noqa: E731
    C.launch(C.attn_fwd_kernel, grid, args, fixed, C.tile_configs("fwd", bd), C.INTERP_TILE,
             ["Lq", "Lk", "M", "D"], "if_fwd")
    return out, lse


def backward(do, q, k, v, k_msg, v_msg, out, lse, scale):
    F, N, H, D = q.shape
    M = k_msg.shape[1]
    BH = F * H
    dev = q.device
    dq = C.empty((F, N, H, D), q.dtype, dev)
    dk = C.empty((F, N, H, D), k.dtype, dev)
    dv = C.empty((F, N, H, D), v.dtype, dev)
    dkm = C.empty((F, M, H, D), k_msg.dtype, dev)
    dvm = C.empty((F, M, H, D), v_msg.dtype, dev)
    bd = C.block_d(D)
    prec = C.dot_precision(q.dtype)
    delta = C.bwd_delta(out, do, BH, H, N, D)
    # patch keys: autotuned tiles; message keys: one BMSG-key tile per (frame, head)
    C.dkdv(q, k, v, do, lse, delta, dk, dv, BH, H, N, N, D, scale, "if_dkdv")
    C.dkdv(q, k_msg, v_msg, do, lse, delta, dkm, dvm, BH, H, N, M, D, scale, "if_dkdv_msg",
           BM=64 if not C.interpreting() else 32, BN=_bmsg(M))
    args = (q, k, v, k_msg, v_msg, do, lse, delta, dq,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k_msg), *C.strides4(v_msg),
            *C.strides4(do), *C.strides4(dq), BH, H, N, N, M, D, scale)
    grid = lambda m: (BH, triton.cdiv(N, m["BM"]))  # noqa: E731
    C.launch(C.attn_bwd_dq_kernel, grid, args, dict(G=1, BMSG=_bmsg(M), BD=bd, HAS_MSG=True, PREC=prec),
             C.tile_configs("dq", bd), C.INTERP_TILE, ["Lq", "Lk", "M", "D"], "if_dq")
    return dq, dk, dv, dkm, dvm
