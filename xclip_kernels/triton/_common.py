"""Block-level Triton building blocks shared by the three attention ops.

Conventions of every kernel here:

- Tensors are addressed ``[batch, seq, heads, head_dim]`` through four strides
  each, so views (unbound packed projections, permuted sequence-first
  tensors, a shared prompt ``q`` with batch stride 0) are read in place.
- A program handles ``G`` (batch, head) pairs at once: its row tile is
  ``G * BM`` rows, row ``r`` belonging to pair ``bh_base + r // BM`` and
  sequence position ``start + r % BM``; key tiles are packed the same way and
  scores between different pairs are masked out. ``G = 1`` is ordinary flash
  attention; ``G > 1`` packs several short sequences (cross-frame attention,
  T = 8..32) into one tensor-core tile instead of padding each to 16+ rows.
- The flattened (batch*heads) index lives on grid axis 0 (limit 2**31 - 1);
  axis 1 counts sequence blocks, which stays small.
- Softmax statistics, accumulation and ``lse`` are float32; scores are kept
  in log2 units (``scale * log2(e)`` folded in) and ``lse`` is stored in
  natural-log units, ``[batch, heads, q_len]`` contiguous.
- float32 inputs use IEEE dots (no TF32), matching eager float32 matmuls.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128  # BD = next power of two of D (>= 16), masked


# Test hook: when True, every buffer the kernels are meant to overwrite starts as
# NaN, so an element a kernel fails to write shows up as NaN in the result.
POISON = False


def empty(shape, dtype, device) -> torch.Tensor:
    """torch.empty, filled with NaN when :data:`POISON` is set."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if POISON:
        t.fill_(float("nan"))
    return t


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def head_dim_reasons(inputs) -> list[str]:
    if inputs.head_dim > MAX_HEAD_DIM:
        return [f"head_dim {inputs.head_dim} not supported by the Triton kernels (supports 1..{MAX_HEAD_DIM})"]
    return []


def block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def strides4(x: torch.Tensor) -> tuple[int, int, int, int]:
    """(batch, seq, head, dim) strides; a 3-D ``[L, H, D]`` tensor is shared by all batches (stride 0)."""
    if x.dim() == 3:
        return (0, *x.stride())
    return tuple(x.stride())


# --- autotuning -------------------------------------------------------------------


def _gpu_arch() -> str:
    if not torch.cuda.is_available():
        return "none"
    major, _ = torch.cuda.get_device_capability()
    return "hopper" if major >= 9 else "ampere"


_TUNERS: dict = {}


def launch(kernel, grid, args: tuple, fixed: dict, configs: list[dict], interp: dict, key: list[str], tag) -> None:
    """Launch ``kernel`` with autotuned meta-parameters on the GPU, ``interp`` under the interpreter.

    ``configs`` entries are dicts of constexprs plus ``num_warps`` / ``num_stages``;
    ``grid`` is a function of the meta-parameters. ``tag`` identifies the config
    list (one autotuner per kernel and tag).
    """
    if interpreting() or not configs:
        meta = dict(fixed)
        meta.update({k: v for k, v in interp.items() if k not in ("num_warps", "num_stages")})
        kernel[grid(meta)](*args, **meta)
        return
    tkey = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, tag)
    tuner = _TUNERS.get(tkey)
    if tuner is None:
        cfgs = []
        for c in configs:
            c = dict(c)
            nw, ns = c.pop("num_warps", 4), c.pop("num_stages", 2)
            cfgs.append(triton.Config(c, num_warps=nw, num_stages=ns))
        tuner = triton.autotune(configs=cfgs, key=key)(kernel)
        _TUNERS[tkey] = tuner
    tuner[lambda meta: grid({**fixed, **meta})](*args, **fixed)


def tile_configs(kind: str, bd: int) -> list[dict]:
    """Autotune candidates (block sizes, warps, stages) for the G = 1 kernels.

    ``kind``: "fwd" and "dq" (BM query rows, BN keys per step) or "dkdv"
    (BN keys per program, BM query rows per step). Hopper gets deeper
    pipelines and larger tiles than Ampere; large head dims drop the largest
    tiles (register pressure).
    """
    arch = _gpu_arch()
    if kind in ("fwd", "dq"):
        if arch == "hopper":
            c = [(128, 64, 8, 3), (128, 64, 4, 3), (128, 32, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3), (32, 64, 4, 2), (128, 128, 8, 2)]
        else:
            c = [(128, 64, 4, 2), (128, 32, 4, 3), (64, 64, 4, 2), (64, 32, 4, 3), (32, 64, 4, 2), (128, 64, 8, 2)]
    else:
        if arch == "hopper":
            c = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 2), (64, 32, 4, 3), (32, 64, 4, 2), (128, 32, 8, 3)]
        else:
            c = [(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 3), (32, 64, 4, 2), (128, 32, 8, 2)]
    out = []
    for bm, bn, nw, ns in c:
        if bd > 64 and bm * bn > 64 * 64 and nw < 8:
            continue
        out.append(dict(BM=bm, BN=bn, num_warps=nw, num_stages=ns))
    return out


INTERP_TILE = dict(BM=32, BN=32)


# --- block helpers ------------------------------------------------------------------


@triton.jit
def _rows(bh_base, start, G: tl.constexpr, BM: tl.constexpr):
    """Packed tile indices: group, sequence position and (batch*head) pair of each row."""
    r = tl.arange(0, G * BM)
    g = r // BM
    t = start + r % BM
    bh = bh_base + g
    return g, t, bh


@triton.jit
def _ptrs(ptr, bh, t, H, s_b, s_t, s_h, s_d, BD: tl.constexpr):
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    d = tl.arange(0, BD).to(tl.int64)
    off = b * s_b + t.to(tl.int64) * s_t + h * s_h
    return ptr + off[:, None] + d[None, :] * s_d


@triton.jit
def load_tile(ptr, bh, t, ok, H, D, s_b, s_t, s_h, s_d, BD: tl.constexpr):
    mask = ok[:, None] & (tl.arange(0, BD) < D)[None, :]
    return tl.load(_ptrs(ptr, bh, t, H, s_b, s_t, s_h, s_d, BD), mask=mask, other=0.0)


@triton.jit
def store_tile(ptr, val, bh, t, ok, H, D, s_b, s_t, s_h, s_d, BD: tl.constexpr):
    mask = ok[:, None] & (tl.arange(0, BD) < D)[None, :]
    tl.store(_ptrs(ptr, bh, t, H, s_b, s_t, s_h, s_d, BD), val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def fwd_block(q, acc, m_i, l_i, g_r, K, V, skb, skt, skh, skd, svb, svt, svh, svd,
              bh_base, start_n, Lk, BH, H, D, qk_scale,
              G: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """One online-softmax step over keys [start_n, start_n + BN) of one key source."""
    g_c, t_c, bh_c = _rows(bh_base, start_n, G, BN)
    col_ok = (t_c < Lk) & (bh_c < BH)
    k = load_tile(K, bh_c, t_c, col_ok, H, D, skb, skt, skh, skd, BD)
    v = load_tile(V, bh_c, t_c, col_ok, H, D, svb, svt, svh, svd, BD)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    keep = (g_r[:, None] == g_c[None, :]) & (t_c < Lk)[None, :]
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def dq_block(dq, q, do, lse2, delta, g_r, K, V, skb, skt, skh, skd, svb, svt, svh, svd,
             bh_base, start_n, Lk, BH, H, D, qk_scale,
             G: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr):
    """dq += dS @ K over keys [start_n, start_n + BN) of one key source (unscaled)."""
    g_c, t_c, bh_c = _rows(bh_base, start_n, G, BN)
    col_ok = (t_c < Lk) & (bh_c < BH)
    k = load_tile(K, bh_c, t_c, col_ok, H, D, skb, skt, skh, skd, BD)
    v = load_tile(V, bh_c, t_c, col_ok, H, D, svb, svt, svh, svd, BD)
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
    keep = (g_r[:, None] == g_c[None, :]) & (t_c < Lk)[None, :]
    p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PREC)
    ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PREC)


# --- kernels --------------------------------------------------------------------------


@triton.jit
def attn_fwd_kernel(
    Q, K, V, K2, V2, O, LSE,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    s2kb, s2kt, s2kh, s2kd,
    s2vb, s2vt, s2vh, s2vd,
    sob, sot, soh, sod,
    BH, H, Lq, Lk, M, D, scale,
    G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BMSG: tl.constexpr, BD: tl.constexpr,
    HAS_MSG: tl.constexpr, PREC: tl.constexpr,
):
    """out = softmax(scale q [K; K2]^T) [V; V2] for G packed (batch, head) pairs x BM query rows.

    K2/V2 (``HAS_MSG``) is a second key source of length M read as one extra
    tile: the message tokens of intra-frame attention, never concatenated.
    """
    bh_base = tl.program_id(0) * G
    g_r, t_r, bh_r = _rows(bh_base, tl.program_id(1) * BM, G, BM)
    row_ok = (t_r < Lq) & (bh_r < BH)
    q = load_tile(Q, bh_r, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([G * BM], float("-inf"), tl.float32)
    l_i = tl.zeros([G * BM], tl.float32)
    acc = tl.zeros([G * BM, BD], tl.float32)
    for start_n in range(0, Lk, BN):
        acc, m_i, l_i = fwd_block(q, acc, m_i, l_i, g_r, K, V, skb, skt, skh, skd, svb, svt, svh, svd,
                                  bh_base, start_n, Lk, BH, H, D, qk_scale, G, BN, BD, PREC)
    if HAS_MSG:
        acc, m_i, l_i = fwd_block(q, acc, m_i, l_i, g_r, K2, V2, s2kb, s2kt, s2kh, s2kd, s2vb, s2vt, s2vh, s2vd,
                                  bh_base, 0, M, BH, H, D, qk_scale, G, BMSG, BD, PREC)
    out = acc / l_i[:, None]
    store_tile(O, out, bh_r, t_r, row_ok, H, D, sob, sot, soh, sod, BD)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + bh_r.to(tl.int64) * Lq + t_r, lse, mask=row_ok)


@triton.jit
def attn_bwd_delta_kernel(
    O, DO, DELTA,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    BH, H, Lq, D,
    BM: tl.constexpr, BD: tl.constexpr,
):
    """delta = rowsum(dO * O) in float32, [batch*heads, Lq]."""
    g_r, t_r, bh_r = _rows(tl.program_id(0), tl.program_id(1) * BM, 1, BM)
    ok = t_r < Lq
    o = load_tile(O, bh_r, t_r, ok, H, D, sob, sot, soh, sod, BD).to(tl.float32)
    do = load_tile(DO, bh_r, t_r, ok, H, D, sdb, sdt, sdh, sdd, BD).to(tl.float32)
    tl.store(DELTA + bh_r.to(tl.int64) * Lq + t_r, tl.sum(o * do, 1), mask=ok)


@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    sdb, sdt, sdh, sdd,
    sdkb, sdkt, sdkh, sdkd,
    sdvb, sdvt, sdvh, sdvd,
    BH, H, Lq, Lk, D, scale,
    G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, PREC: tl.constexpr,
):
    """dK, dV of one key source for G packed pairs x BN keys, looping over all query rows.

    A shared query (batch stride 0) is read in place for every batch.
    """
    bh_base = tl.program_id(0) * G
    g_c, t_c, bh_c = _rows(bh_base, tl.program_id(1) * BN, G, BN)
    col_ok = (t_c < Lk) & (bh_c < BH)
    k = load_tile(K, bh_c, t_c, col_ok, H, D, skb, skt, skh, skd, BD)
    v = load_tile(V, bh_c, t_c, col_ok, H, D, svb, svt, svh, svd, BD)
    qk_scale = scale * 1.4426950408889634
    dk = tl.zeros([G * BN, BD], tl.float32)
    dv = tl.zeros([G * BN, BD], tl.float32)
    for start_m in range(0, Lq, BM):
        g_r, t_r, bh_r = _rows(bh_base, start_m, G, BM)
        row_ok = (t_r < Lq) & (bh_r < BH)
        q = load_tile(Q, bh_r, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
        do = load_tile(DO, bh_r, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
        stat = bh_r.to(tl.int64) * Lq + t_r
        lse2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
        keep = (g_c[:, None] == g_r[None, :]) & row_ok[None, :]
        p_t = tl.where(keep, tl.exp2(s_t - lse2[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
    store_tile(DK, dk * scale, bh_c, t_c, col_ok, H, D, sdkb, sdkt, sdkh, sdkd, BD)
    store_tile(DV, dv, bh_c, t_c, col_ok, H, D, sdvb, sdvt, sdvh, sdvd, BD)


@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, K2, V2, DO, LSE, DELTA, DQ,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    s2kb, s2kt, s2kh, s2kd,
    s2vb, s2vt, s2vh, s2vd,
    sdb, sdt, sdh, sdd,
    sqgb, sqgt, sqgh, sqgd,
    BH, H, Lq, Lk, M, D, scale,
    G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BMSG: tl.constexpr, BD: tl.constexpr,
    HAS_MSG: tl.constexpr, PREC: tl.constexpr,
):
    """dQ for G packed pairs x BM query rows, looping over the keys of both sources."""
    bh_base = tl.program_id(0) * G
    g_r, t_r, bh_r = _rows(bh_base, tl.program_id(1) * BM, G, BM)
    row_ok = (t_r < Lq) & (bh_r < BH)
    q = load_tile(Q, bh_r, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
    do = load_tile(DO, bh_r, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
    stat = bh_r.to(tl.int64) * Lq + t_r
    lse2 = tl.load(LSE + stat, mask=row_ok, other=0.0) * 1.4426950408889634
    delta = tl.load(DELTA + stat, mask=row_ok, other=0.0)
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([G * BM, BD], tl.float32)
    for start_n in range(0, Lk, BN):
        dq = dq_block(dq, q, do, lse2, delta, g_r, K, V, skb, skt, skh, skd, svb, svt, svh, svd,
                      bh_base, start_n, Lk, BH, H, D, qk_scale, G, BN, BD, PREC)
    if HAS_MSG:
        dq = dq_block(dq, q, do, lse2, delta, g_r, K2, V2, s2kb, s2kt, s2kh, s2kd, s2vb, s2vt, s2vh, s2vd,
                      bh_base, 0, M, BH, H, D, qk_scale, G, BMSG, BD, PREC)
    store_tile(DQ, dq * scale, bh_r, t_r, row_ok, H, D, sqgb, sqgt, sqgh, sqgd, BD)


# --- launch helpers -------------------------------------------------------------------


def bwd_delta(out: torch.Tensor, do: torch.Tensor, BH: int, H: int, Lq: int, D: int) -> torch.Tensor:
    """float32 rowsum(dO * O), [BH * Lq] (dO with any strides)."""
    delta = empty((BH * Lq,), torch.float32, out.device)
    BM = 64 if not interpreting() else 32
    attn_bwd_delta_kernel[(BH, triton.cdiv(Lq, BM))](
        out, do, delta, *strides4(out), *strides4(do), BH, H, Lq, D, BM=BM, BD=block_d(D),
    )
    return delta


def dkdv(q, k, v, do, lse, delta, dk, dv, BH, H, Lq, Lk, D, scale, tag, G=1, BM=None, BN=None):
    """Launch the dK/dV kernel for one key source (autotuned unless BM/BN are given)."""
    bd = block_d(D)
    args = (q, k, v, do, lse, delta, dk, dv,
            *strides4(q), *strides4(k), *strides4(v), *strides4(do), *strides4(dk), *strides4(dv),
            BH, H, Lq, Lk, D, scale)
    fixed = dict(G=G, BD=bd, PREC=dot_precision(q.dtype))
    grid = lambda m: (triton.cdiv(BH, m["G"]), triton.cdiv(Lk, m["BN"]))  # noqa: E731
    if BM is not None:
        fixed.update(BM=BM, BN=BN)
        launch(attn_bwd_dkdv_kernel, grid, args, fixed, [], {}, [], tag)
    else:
        launch(attn_bwd_dkdv_kernel, grid, args, fixed, tile_configs("dkdv", bd), INTERP_TILE, ["Lq", "Lk", "D"], tag)
