"""Triton kernels of ``cross_frame_attn``: q, k, v ``[B, T, H, D]`` -> ``[B, T, H, D]``.

T is tiny in X-CLIP (8..32 frames) and B*H large, so the usual one-sequence
tile would be mostly padding. Up to ``PACK_MAX_T`` frames, a program packs
``G = ROWS // T_pad`` (batch, head) sequences into one ``ROWS``-row tile,
masks the scores between different sequences, and covers each whole sequence
in one step: the forward is one tile product, and the backward is a single
fused kernel computing dQ, dK and dV together from one read of q, k, v, o and
dO (delta = rowsum(dO * O) computed in-kernel). Longer sequences fall back to
the generic flash kernels of ``_common`` (G = 1, key loop, dK/dV + dQ kernels).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C

PACK_MAX_T = 64


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def _packed_configs(tp: int, kind: str) -> list[dict]:
    if C._gpu_arch() == "hopper":
        rows = [(32, 2, 3), (64, 4, 3), (64, 8, 2), (128, 8, 2)] if kind == "fwd" else [(32, 2, 2), (64, 4, 2), (64, 8, 2), (128, 8, 1)]
    else:
        rows = [(32, 2, 2), (64, 4, 2), (128, 8, 2)] if kind == "fwd" else [(32, 2, 1), (64, 4, 1), (128, 8, 1)]
    out = []
    for r, nw, ns in rows:
        if r < max(tp, 16):
            continue
        cfg = dict(G=r // tp, num_warps=nw, num_stages=ns)
        if kind == "fwd":
            cfg.update(BM=tp, BN=tp)
        out.append(cfg)
    return out or [dict(G=1, BM=tp, BN=tp, num_warps=4, num_stages=1) if kind == "fwd" else dict(G=1, num_warps=4, num_stages=1)]


def _pack_tp(T: int) -> int:
    return triton.next_power_of_2(T)


def _interp_group(tp: int) -> int:
    return max(1, 32 // tp)


def forward(q, k, v, scale):
    B, T, H, D = q.shape
    BH = B * H
    out = C.empty((B, T, H, D), q.dtype, q.device)
    lse = C.empty((B, H, T), torch.float32, q.device)
    bd = C.block_d(D)
    args = (q, k, v, k, v, out, lse,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k), *C.strides4(v), *C.strides4(out),
            BH, H, T, T, 0, D, scale)
    fixed = dict(BMSG=16, BD=bd, HAS_MSG=False, PREC=C.dot_precision(q.dtype))
    if T <= PACK_MAX_T:
        tp = _pack_tp(T)
        grid = lambda m: (triton.cdiv(BH, m["G"]), triton.cdiv(T, m["BM"]))  # noqa: E731
        g = _interp_group(tp)
        C.launch(C.attn_fwd_kernel, grid, args, fixed, _packed_configs(tp, "fwd"),
                 dict(G=g, BM=tp, BN=tp), ["Lq", "D"], ("cf_packed", tp))
    else:
        fixed["G"] = 1
        grid = lambda m: (BH, triton.cdiv(T, m["BM"]))  # noqa: E731
        C.launch(C.attn_fwd_kernel, grid, args, fixed, C.tile_configs("fwd", bd), C.INTERP_TILE,
                 ["Lq", "Lk", "D"], "cf_fwd")
    return out, lse


@triton.jit
def _cf_bwd_packed_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    sgb, sgt, sgh, sgd,  # dq, dk, dv: contiguous [B, T, H, D], one stride set
    BH, H, T, D, scale,
    G: tl.constexpr, TP: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """dQ, dK, dV of G whole sequences (T <= TP) packed in one tile, in one pass."""
    bh_base = tl.program_id(0) * G
    g, t, bh = C._rows(bh_base, 0, G, TP)
    ok = (t < T) & (bh < BH)
    q = C.load_tile(Q, bh, t, ok, H, D, sqb, sqt, sqh, sqd, BD)
    k = C.load_tile(K, bh, t, ok, H, D, skb, skt, skh, skd, BD)
    v = C.load_tile(V, bh, t, ok, H, D, svb, svt, svh, svd, BD)
    o = C.load_tile(O, bh, t, ok, H, D, sob, sot, soh, sod, BD)
    do = C.load_tile(DO, bh, t, ok, H, D, sdb, sdt, sdh, sdd, BD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lse2 = tl.load(LSE + bh.to(tl.int64) * T + t, mask=ok, other=0.0) * 1.4426950408889634
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * (scale * 1.4426950408889634)
    keep = (g[:, None] == g[None, :]) & ok[:, None] & (t < T)[None, :]
    p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
    dv = tl.dot(tl.trans(p).to(do.dtype), do, input_precision=PREC)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = (p * (dp - delta[:, None])).to(q.dtype)
    dq = tl.dot(ds, k, input_precision=PREC) * scale
    dk = tl.dot(tl.trans(ds), q, input_precision=PREC) * scale
    C.store_tile(DQ, dq, bh, t, ok, H, D, sgb, sgt, sgh, sgd, BD)
    C.store_tile(DK, dk, bh, t, ok, H, D, sgb, sgt, sgh, sgd, BD)
    C.store_tile(DV, dv, bh, t, ok, H, D, sgb, sgt, sgh, sgd, BD)


def backward(do, q, k, v, out, lse, scale):
    B, T, H, D = q.shape
    BH = B * H
    dq = C.empty((B, T, H, D), q.dtype, q.device)
    dk = C.empty((B, T, H, D), k.dtype, q.device)
    dv = C.empty((B, T, H, D), v.dtype, q.device)
    bd = C.block_d(D)
    prec = C.dot_precision(q.dtype)
    if T <= PACK_MAX_T:
        tp = _pack_tp(T)
        args = (q, k, v, out, do, lse, dq, dk, dv,
                *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(out), *C.strides4(do), *C.strides4(dq),
                BH, H, T, D, scale)
        grid = lambda m: (triton.cdiv(BH, m["G"]),)  # noqa: E731
        C.launch(_cf_bwd_packed_kernel, grid, args, dict(TP=tp, BD=bd, PREC=prec), _packed_configs(tp, "bwd"),
                 dict(G=_interp_group(tp)), ["T", "D"], ("cf_bwd_packed", tp))
        return dq, dk, dv
    delta = C.bwd_delta(out, do, BH, H, T, D)
    C.dkdv(q, k, v, do, lse, delta, dk, dv, BH, H, T, T, D, scale, "cf_dkdv")
    args = (q, k, v, k, v, do, lse, delta, dq,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(k), *C.strides4(v), *C.strides4(do),
            *C.strides4(dq), BH, H, T, T, 0, D, scale)
    grid = lambda m: (BH, triton.cdiv(T, m["BM"]))  # noqa: E731
    C.launch(C.attn_bwd_dq_kernel, grid, args, dict(G=1, BMSG=16, BD=bd, HAS_MSG=False, PREC=prec),
             C.tile_configs("dq", bd), C.INTERP_TILE, ["Lq", "Lk", "D"], "cf_dq")
    return dq, dk, dv
