"""Triton kernels of ``prompt_cross_attn``: class-text queries attend to one video's tokens.

q ``[B, K, H, D]`` or ``[K, H, D]`` shared by all B videos; k, v ``[B, N, H, D]``
-> out ``[B, K, H, D]``.

A shared q is addressed with batch stride 0, so the forward and the dK/dV
kernel read it in place for every video (no ``[B, K, H, D]`` expand copy).

Backward, batched q: the kernels of ``_common`` (one fused launch, or two
for long sequences). Shared q: two launches. The first computes dK, dV
(``_common`` fused kernel without dQ, or the general dK/dV kernel). The
second, ``_shared_dq_kernel``, owns (head, K-block) tiles of the shared
dQ and loops over the videos, accumulating in float32 registers; it is split
over ``S`` chunks of videos only as far as needed to fill the GPU. With
``S > 1`` each split writes a float32 partial, and the last split of a tile
to finish (an atomic ticket per tile) sums the partials and writes dQ in the
input dtype: the reduction over videos happens inside the kernel, no
``[B, K, H, D]`` tensor and no extra launch. The ticket is reset by that last
split, so the kernel is idempotent (autotuning reruns it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _common as C

# Programs the shared-q dQ kernel aims for (about two per SM); set from the
# device at the first call. Tests raise it under the interpreter to force splits.
TARGET_PROGRAMS: int | None = None


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def forward(q, k, v, scale):
    B, N, H, D = k.shape
    K = q.shape[-3]
    return C.forward(q, k, v, None, None, K, N, 0, B * H, H, D, scale, (B, K, H, D), "pc_fwd")


def _target_programs() -> int:
    global TARGET_PROGRAMS
    if TARGET_PROGRAMS is None:
        if C.interpreting() or not torch.cuda.is_available():
            return 1
        TARGET_PROGRAMS = 2 * torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return TARGET_PROGRAMS


def num_splits(B: int, H: int, K: int, BM: int, target: int) -> tuple[int, int]:
    """(S, videos per split) for a BM-row tile: as few splits as fill ``target`` programs.

    Mirrors the computation inside ``_shared_dq_kernel``.
    """
    tiles = H * triton.cdiv(K, BM)
    s = max(1, min(B, triton.cdiv(target, tiles)))
    per = triton.cdiv(B, s)
    return triton.cdiv(B, per), per


@triton.jit
def _shared_dq_kernel(
    Q, K, V, O, DO, LSE, DQ, PART, TICKET,
    sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    sgt, sgh, sgd,
    B, H, Lq, Lk, D, scale, TARGET,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """dQ of a shared q for one (head, BM-row block) tile over one chunk of videos; the last chunk reduces."""
    nmb = tl.cdiv(Lq, BM)
    tiles = H * nmb
    S = tl.minimum(B, tl.maximum(1, tl.cdiv(TARGET, tiles)))
    per = tl.cdiv(B, S)
    S = tl.cdiv(B, per)
    pid = tl.program_id(0)
    tile = pid // S
    split = pid % S
    h = tile // nmb
    t_r = (tile % nmb) * BM + tl.arange(0, BM)
    row_ok = t_r < Lq
    q = C.load_tile(Q, h, t_r, row_ok, H, D, 0, sqt, sqh, sqd, BD)  # pair h = (batch 0, head h)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BM, BD], tl.float32)
    b_lo = split * per
    b_hi = tl.minimum(b_lo + per, B)
    for b in range(b_lo, b_hi):
        bh = b * H + h
        do = C.load_tile(DO, bh, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
        o = C.load_tile(O, bh, t_r, row_ok, H, D, sob, sot, soh, sod, BD)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        lse2 = tl.load(LSE + bh.to(tl.int64) * Lq + t_r, mask=row_ok, other=0.0) * 1.4426950408889634
        for start_n in range(0, Lk, BN):
            t_c = start_n + tl.arange(0, BN)
            col_ok = t_c < Lk
            k = C.load_tile(K, bh, t_c, col_ok, H, D, skb, skt, skh, skd, BD)
            v = C.load_tile(V, bh, t_c, col_ok, H, D, svb, svt, svh, svd, BD)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    if S == 1:
        C.store_tile(DQ, dq * scale, h, t_r, row_ok, H, D, 0, sgt, sgh, sgd, BD)
    else:
        ar_d = tl.arange(0, BD)
        rows = (split * H + h).to(tl.int64) * Lq + t_r
        tl.store(PART + rows[:, None] * BD + ar_d[None, :], dq, mask=row_ok[:, None])
        tl.debug_barrier()  # every thread's partial is stored before the ticket is taken
        ticket = tl.atomic_add(TICKET + tile, 1, sem="acq_rel")
        if ticket == S - 1:  # the last split of this tile: sum the partials in a fixed order
            acc = tl.zeros([BM, BD], tl.float32)
            for sp in range(0, S):
                r2 = (sp * H + h).to(tl.int64) * Lq + t_r
                acc += tl.load(PART + r2[:, None] * BD + ar_d[None, :], mask=row_ok[:, None], other=0.0,
                               cache_modifier=".cg")
            C.store_tile(DQ, acc * scale, h, t_r, row_ok, H, D, 0, sgt, sgh, sgd, BD)
            tl.atomic_xchg(TICKET + tile, 0)


def backward(do, q, k, v, out, lse, scale, grads=None):
    """Gradients of (q, k, v), written into ``grads`` (any strides) when given; a shared q gets [K, H, D]."""
    B, N, H, D = k.shape
    K = q.shape[-3]
    BH = B * H
    dev = q.device
    grads = C.grad_buffers(grads, (q, k, v), dev)
    if q.dim() == 4:
        C.backward(do, q, k, v, None, None, out, lse, K, N, 0, BH, H, D, scale, grads, "pc")
        return grads
    dq, dk, dv = grads
    C.backward(do, q, k, v, None, None, out, lse, K, N, 0, BH, H, D, scale, grads, "pc_shared", write_dq=False)
    bd = C.block_d(D)
    target = _target_programs()
    configs = C.tile_configs("dq", bd, elt=q.element_size())
    bms = [C.INTERP_TILE["BM"]] if C.interpreting() else [c["BM"] for c in configs]
    s_max = max(num_splits(B, H, K, bm, target)[0] for bm in bms)
    if s_max > 1:
        part = C.empty((s_max * H * K * bd,), torch.float32, dev)
        ticket = torch.zeros((H * triton.cdiv(K, min(bms)),), dtype=torch.int32, device=dev)
    else:
        part = ticket = lse  # never touched with one split
    args = (q, k, v, out, do, lse, dq, part, ticket,
            *q.stride(), *C.strides4(k), *C.strides4(v), *C.strides4(out), *C.strides4(do), *dq.stride(),
            B, H, K, N, D, scale, target)
    grid = lambda m: (H * triton.cdiv(K, m["BM"]) * num_splits(B, H, K, m["BM"], target)[0],)  # noqa: E731
    C.launch(_shared_dq_kernel, grid, args, dict(BD=bd, PREC=C.dot_precision(q.dtype)), configs, C.INTERP_TILE,
             ["B", "H", "Lq", "Lk", "D"], "pc_dq_shared")
    return grads
