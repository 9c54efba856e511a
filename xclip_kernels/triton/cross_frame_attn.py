"""Triton kernels of ``cross_frame_attn``: q, k, v ``[B, T, H, D]`` -> ``[B, T, H, D]``.

T is tiny in X-CLIP (8..32 frames) and B*H large, so the usual one-sequence
tile would be mostly padding. Up to ``PACK_MAX_T`` frames, a program packs
``G = ROWS // T_pad`` (batch, head) sequences into one ``ROWS``-row tile,
masks the scores between different sequences, and covers each whole sequence
in one step: the forward is one tile product (one launch), and the backward is
one fused kernel computing dQ, dK and dV together from one read of q, k, v, o
and dO (delta = rowsum(dO * O) computed in-kernel; one launch). Longer
sequences use the G = 1 kernels of ``_common`` (one forward launch; one fused
backward launch, or two beyond ``_common.FUSED_MAX_KEYS``), and so do float32
sequences beyond :func:`packed_max_t` (the packed backward keeps q, k, v, o,
dO and three score tiles in registers: in float32 a 32-row tile at padded head
dim 128, or any 64-row tile, spills).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import _common as C

PACK_MAX_T = 64


def packed_max_t(elt: int, bd: int) -> int:
    """Longest sequence the packed kernels take, for element size ``elt`` and padded head dim ``bd``.

    float32 (ptxas, sm_80 and sm_90, triton 3.8): the packed backward's 32-row
    tile spills 840-2836 B at BD = 128 and its 64-row tile spills 0.3-156 KB at
    every BD (benchmarks/RESULTS.md); the G = 1 kernels do not. Forward and
    backward take the same path. One rule for the run time and for
    ``benchmarks.static_resources`` (which calls :func:`forward` / :func:`backward`).
    """
    if elt >= 4:
        return 16 if bd >= 128 else 32
    return PACK_MAX_T


def use_packed(T: int, D: int, elt: int) -> bool:
    """Whether a ``[B, T, H, D]`` call with ``elt``-byte elements takes the packed kernels (else the G = 1 ones)."""
    return T <= packed_max_t(elt, C.block_d(D))


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def _packed_configs(tp: int, kind: str, arch: str | None = None, elt: int = 2, bd: int = 64) -> list[dict]:
    """Packed-tile candidates: ROWS = G * T_pad rows per program (num_warps, num_stages per ROWS).

    Checked for spills and shared memory by tests/kernels/test_triton_resources.py.
    """
    arch = arch or C._gpu_arch()
    if elt >= 4:  # float32: IEEE dots on CUDA cores, smaller tiles, more warps for D > 64
        if bd >= 128:
            # forward: one stage spills on sm_90 (16 rows: 8 B, 24 B with 8 warps; 32 rows: 52 B), two do not.
            # backward: any 32-row tile spills (T = 17..32 at D > 64 takes the G = 1 path: packed_max_t)
            rows = [(16, 4, 2), (32, 8, 2)] if kind == "fwd" else [(16, 4, 1)]
        else:
            rows = [(32, 4, 1), (16, 2, 1)] if kind == "fwd" else [(16, 2, 1)]
    elif bd >= 128:  # D > 64: no 4-warp 64-row tiles, no 128-row backward tiles (they spill)
        if arch == "hopper":
            # the 128-row forward tile at T = 16 spills 8-24 B with 2-3 stages (fp16 / bf16): one stage there
            rows = ([(32, 2, 3), (64, 4, 3), (64, 8, 2), (128, 8, 1 if tp == 16 else 2)] if kind == "fwd"
                    else [(32, 2, 2), (64, 8, 2)])
        else:
            # sm_80, T_pad = 64: the 2-stage 64-row forward spills 16-36 B (bf16); at T = 17..32 the 2-warp
            # 32-row backward spills 40-80 B (bf16, T = 17): one stage there, the 8-warp tile only there
            rows = ([(32, 2, 2), (64, 8, 1 if tp == 64 else 2)] if kind == "fwd"
                    else ([(32, 2, 1)] if tp < 32 else []) + [(64, 8, 1)])
    elif arch == "hopper":
        rows = [(32, 2, 3), (64, 4, 3), (64, 8, 2), (128, 8, 2)] if kind == "fwd" else [(32, 2, 2), (64, 4, 2), (64, 8, 2), (128, 8, 1)]
    else:
        # the 128-row forward tile spills at T > 8 (8-64 B, fp16 and bf16, one or two stages)
        rows = ([(32, 2, 2), (64, 4, 2)] + ([(128, 8, 2)] if tp <= 8 else []) if kind == "fwd"
                else [(32, 2, 1), (64, 4, 1), (64, 8, 1)])
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
    return max(1, triton.next_power_of_2(T))


def _interp_group(tp: int) -> int:
    return max(1, 32 // tp)


def forward(q, k, v, scale):
    B, T, H, D = q.shape
    packed = None
    if use_packed(T, D, q.element_size()):
        tp = _pack_tp(T)
        packed = (_packed_configs(tp, "fwd", elt=q.element_size(), bd=C.block_d(D)),
                  dict(G=_interp_group(tp), BM=tp, BN=tp))
    return C.forward(q, k, v, None, None, T, T, 0, B * H, H, D, scale, (B, T, H, D),
                     ("cf_packed", _pack_tp(T)) if packed else "cf_fwd", packed=packed)


@triton.jit
def _cf_bwd_packed_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    sqgb, sqgt, sqgh, sqgd,
    skgb, skgt, skgh, skgd,
    svgb, svgt, svgh, svgd,
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
    C.store_tile(DQ, dq, bh, t, ok, H, D, sqgb, sqgt, sqgh, sqgd, BD)
    C.store_tile(DK, dk, bh, t, ok, H, D, skgb, skgt, skgh, skgd, BD)
    C.store_tile(DV, dv, bh, t, ok, H, D, svgb, svgt, svgh, svgd, BD)


def backward(do, q, k, v, out, lse, scale, grads=None):
    """Gradients of (q, k, v), written into ``grads`` (any strides, e.g. views of one packed buffer) when given."""
    B, T, H, D = q.shape
    BH = B * H
    grads = C.grad_buffers(grads, (q, k, v), q.device)
    dq, dk, dv = grads
    if not use_packed(T, D, q.element_size()):
        C.backward(do, q, k, v, None, None, out, lse, T, T, 0, BH, H, D, scale, grads, "cf")
        return grads
    tp = _pack_tp(T)
    args = (q, k, v, out, do, lse, dq, dk, dv,
            *C.strides4(q), *C.strides4(k), *C.strides4(v), *C.strides4(out), *C.strides4(do),
            *C.strides4(dq), *C.strides4(dk), *C.strides4(dv), BH, H, T, D, scale)
    grid = lambda m: (triton.cdiv(BH, m["G"]),)  # noqa: E731
    C.launch(_cf_bwd_packed_kernel, grid, args, dict(TP=tp, BD=C.block_d(D), PREC=C.dot_precision(q.dtype)),
             _packed_configs(tp, "bwd", elt=q.element_size(), bd=C.block_d(D)), dict(G=_interp_group(tp)), ["T", "D"],
             ("cf_bwd_packed", tp))
    return grads
