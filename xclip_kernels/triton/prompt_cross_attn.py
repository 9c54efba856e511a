"""Triton kernels of ``prompt_cross_attn``: class-text queries attend to one video's tokens.

q ``[B, K, H, D]`` or ``[K, H, D]`` shared by all B videos; k, v ``[B, N, H, D]``
-> out ``[B, K, H, D]``.

A shared q is addressed with batch stride 0, so the forward and the dK/dV
kernel read it in place for every video (no ``[B, K, H, D]`` expand copy).
Its gradient is reduced over videos inside the dQ kernel: each program owns
a (head, K-block) tile of dQ and loops over a contiguous chunk of videos,
accumulating in float32 registers. The videos are split into ``S`` chunks
only as far as needed to fill the GPU (``S * H * cdiv(K, BM)`` programs);
the ``S`` float32 partials ``[S, K, H, D]`` are then summed (S = 1 when the
heads and K blocks alone fill the machine, and always under the
interpreter), so nothing of size B x K is ever materialised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def forward(q, k, v, scale):
    B, N, H, D = k.shape
    K = q.shape[-3]
    BH = B * H
    out = C.empty((B, K, H, D), q.dtype, q.device)
    lse = C.empty((B, H, K), torch.float32, q.device)
    bd = C.block_d(D)
    args = (q, k, v, k, v, out, lse,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k), *C.strides4(v), *C.strides4(out),
            BH, H, K, N, 0, D, scale)
    fixed = dict(G=1, BMSG=16, BD=bd, HAS_MSG=False, PREC=C.dot_precision(q.dtype))
    grid = lambda m: (BH, triton.cdiv(K, m["BM"]))  # noqa: E731
    C.launch(C.attn_fwd_kernel, grid, args, fixed, C.tile_configs("fwd", bd), C.INTERP_TILE,
             ["Lq", "Lk", "D"], "pc_fwd")
    return out, lse


@triton.jit
def _shared_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQP,
    sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sdb, sdt, sdh, sdd,
    spb, spt, sph, spd,  # partials [S, K, H, D] float32
    B, H, Lq, Lk, D, scale, B_PER,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """Partial dQ of a shared q: sum over videos [split * B_PER, (split + 1) * B_PER) of dS_b @ K_b."""
    pid = tl.program_id(0)
    h = pid % H
    split = pid // H
    BH = B * H
    g_r, t_r, hh = C._rows(h, tl.program_id(1) * BM, 1, BM)  # hh == h: batch 0 of a stride-0 q
    row_ok = t_r < Lq
    q = C.load_tile(Q, hh, t_r, row_ok, H, D, 0, sqt, sqh, sqd, BD)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BM, BD], tl.float32)
    b_lo = split * B_PER
    b_hi = tl.minimum(b_lo + B_PER, B)
    for b in range(b_lo, b_hi):
        bh = b * H + h
        bh_r = hh + b * H
        do = C.load_tile(DO, bh_r, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
        stat = bh_r.to(tl.int64) * Lq + t_r
        lse2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
        for start_n in range(0, Lk, BN):
            dq = C.dq_block(dq, q, do, lse2, delta, g_r, K, V, skb, skt, skh, skd, svb, svt, svh, svd,
                            bh, start_n, Lk, BH, H, D, qk_scale, 1, BN, BD, PREC)
    C.store_tile(DQP, dq * scale, hh + split * H, t_r, row_ok, H, D, spb, spt, sph, spd, BD)


def _num_splits(B: int, H: int, K: int) -> int:
    if C.interpreting() or not torch.cuda.is_available():
        return 1
    sms = torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    programs = H * triton.cdiv(K, 64)
    return max(1, min(B, triton.cdiv(2 * sms, programs)))


def backward(do, q, k, v, out, lse, scale):
    B, N, H, D = k.shape
    K = q.shape[-3]
    BH = B * H
    dev = q.device
    dk = C.empty((B, N, H, D), k.dtype, dev)
    dv = C.empty((B, N, H, D), v.dtype, dev)
    bd = C.block_d(D)
    prec = C.dot_precision(q.dtype)
    delta = C.bwd_delta(out, do, BH, H, K, D)
    C.dkdv(q, k, v, do, lse, delta, dk, dv, BH, H, K, N, D, scale, "pc_dkdv")
    if q.dim() == 4:
        dq = C.empty((B, K, H, D), q.dtype, dev)
        args = (q, k, v, k, v, do, lse, delta, dq,
                *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k), *C.strides4(v),
                *C.strides4(do), *C.strides4(dq), BH, H, K, N, 0, D, scale)
        grid = lambda m: (BH, triton.cdiv(K, m["BM"]))  # noqa: E731
        C.launch(C.attn_bwd_dq_kernel, grid, args, dict(G=1, BMSG=16, BD=bd, HAS_MSG=False, PREC=prec),
                 C.tile_configs("dq", bd), C.INTERP_TILE, ["Lq", "Lk", "D"], "pc_dq")
        return dq, dk, dv
    S = _num_splits(B, H, K)
    b_per = triton.cdiv(B, S)
    S = triton.cdiv(B, b_per)
    part = C.empty((S, K, H, D), torch.float32, dev)
    args = (q, k, v, do, lse, delta, part,
            *q.stride(), *C.strides4(k), *C.strides4(v), *C.strides4(do), *part.stride(),
            B, H, K, N, D, scale, b_per)
    grid = lambda m: (S * H, triton.cdiv(K, m["BM"]))  # noqa: E731
    C.launch(_shared_dq_kernel, grid, args, dict(BD=bd, PREC=prec), C.tile_configs("dq", bd), C.INTERP_TILE,
             ["Lq", "Lk", "D"], "pc_dq_shared")
    dq = part[0] if S == 1 else part.sum(0)
    return dq.to(q.dtype), dk, dv
