"""Block-level Triton building blocks shared by the three attention ops.

Conventions of every kernel here:

- Tensors are addressed ``[batch, seq, heads, head_dim]`` through four strides
  each, so views (unbound packed projections, permuted sequence-first
  tensors, a shared prompt ``q`` with batch stride 0, gradients written into
  views of one packed buffer) are read and written in place.
- One flattened grid axis (axis 0, limit 2**31 - 1): program ``pid`` handles
  pair group ``pid // n_blocks`` and sequence block ``pid % n_blocks``, so
  the programs that read the same K/V (forward, dQ) or the same Q/dO (dK/dV)
  are launched next to each other and share L2.
- A forward program handles ``G`` (batch, head) pairs at once: its row tile
  is ``G * BM`` rows, row ``r`` belonging to pair ``bh_base + r // BM`` and
  sequence position ``start + r % BM``; key tiles are packed the same way and
  scores between different pairs are masked out (cross-frame attention packs
  several T = 8..32 sequences into one tensor-core tile).
- A second key source of M keys (intra-frame message tokens) is addressed as
  key positions ``Lk .. Lk + M - 1`` of one key sequence: it lands in the
  padding of the last key tile (two masked loads into one tile), never in a
  tile or a launch of its own, and ``cat(k, k_msg)`` is never built.
- Softmax statistics, accumulation and ``lse`` are float32; scores are kept
  in log2 units (``scale * log2(e)`` folded in) and ``lse`` is stored in
  natural-log units, ``[batch, heads, q_len]`` contiguous.
- float32 inputs use IEEE dots (no TF32), matching eager float32 matmuls.

Backward kernels:

- ``attn_bwd_fused_kernel``: one program owns a whole (batch, head) pair's
  K/V (for the sequence lengths of X-CLIP). It first computes
  ``delta = rowsum(dO * O)`` of all its query rows into a small float32
  scratch, then walks the key tiles; for each key tile it loops over the query
  tiles once and computes dV, dK (registers) and the dQ contribution
  (5 matmuls per tile pair: S, dP, dV, dK, dQ). dQ is accumulated in a float32
  scratch row block that only this program touches (no atomics) and written in
  the output dtype at the last key tile. One launch for the whole backward.
- ``attn_bwd_dkdv_kernel`` + ``attn_bwd_dq_kernel``: the general path for long
  sequences (parallel over key / query blocks); each recomputes delta from
  O and dO itself, so the backward is two launches.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 128  # BD = next power of two of D (>= 16), masked

# Sequences up to this many keys (message keys included) take the one-launch
# fused backward; longer ones the two-launch general path. X-CLIP's largest
# key count is 258 (ViT-L/14: 257 tokens + 1 message).
FUSED_MAX_KEYS = 320
# ... and only when there are at least as many (batch, head) pairs as SMs (the
# fused kernel runs one program per pair; fewer would leave SMs idle, where the
# general path spreads each pair over its key / query blocks). Set from the
# device at the first call; 0 (always fused) without CUDA.
FUSED_MIN_PAIRS: int | None = None


def use_fused(BH: int, keys: int) -> bool:
    """Whether a backward of ``BH`` pairs over ``keys`` keys takes the one-launch fused kernel."""
    global FUSED_MIN_PAIRS
    if FUSED_MIN_PAIRS is None:
        FUSED_MIN_PAIRS = (torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
                           if torch.cuda.is_available() and not interpreting() else 0)
    return keys <= FUSED_MAX_KEYS and BH >= FUSED_MIN_PAIRS


# Test hook: when True, every buffer the kernels are meant to overwrite (and
# every scratch buffer) starts as NaN, so an element a kernel fails to write,
# or a scratch element read before it is written, shows up as NaN.
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


def grad_buffers(grads, like, device) -> tuple:
    """The gradient outputs: ``grads`` (preallocated, any strides) checked against ``like``, else fresh buffers."""
    if grads is None:
        return tuple(empty(tuple(t.shape), t.dtype, device) for t in like)
    grads = tuple(grads)
    if len(grads) != len(like):
        raise ValueError(f"grads: expected {len(like)} preallocated gradient tensors, got {len(grads)}")
    for i, (g, t) in enumerate(zip(grads, like)):
        if g.shape != t.shape or g.dtype != t.dtype or g.device != t.device:
            raise ValueError(
                f"grads[{i}]: expected shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}; "
                f"got {tuple(g.shape)}, {g.dtype}, {g.device}"
            )
    return grads


# --- autotuning -------------------------------------------------------------------


_ARCH: dict = {}


def _gpu_arch() -> str:
    """"hopper" (sm_90+), "ampere" or "none"; looked up once per device (host cost per call matters)."""
    if not torch.cuda.is_available():
        return "none"
    dev = torch.cuda.current_device()
    arch = _ARCH.get(dev)
    if arch is None:
        major, _ = torch.cuda.get_device_capability(dev)
        arch = _ARCH[dev] = "hopper" if major >= 9 else "ampere"
    return arch


_TUNERS: dict = {}


def launch(kernel, grid, args: tuple, fixed: dict, configs: list[dict], interp: dict, key: list[str], tag) -> None:
    """Launch ``kernel`` with autotuned meta-parameters on the GPU, ``interp`` under the interpreter.

    ``configs`` entries are dicts of constexprs plus ``num_warps`` / ``num_stages``;
    ``grid`` is a function of the meta-parameters. ``tag`` identifies the config
    list (one autotuner per kernel and tag). Every kernel here is idempotent
    (it overwrites its outputs and scratch), so autotuning reruns are safe.
    """
    if interpreting() or not configs:
        meta = dict(fixed)
        meta.update({k: v for k, v in interp.items() if k not in ("num_warps", "num_stages")})
        kernel[grid(meta)](*args, **meta)
        return
    tkey = (kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__, tag,
            tuple(tuple(sorted(c.items())) for c in configs), tuple(sorted(fixed.items())))
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


# Autotune candidates (BM, BN, num_warps, num_stages) per kernel kind, arch,
# element size and BD (= padded head dim: 32, 64 or 128). Every entry compiles
# without a register spill and within shared memory for its arch at X-CLIP
# shapes: tests/kernels/test_triton_resources.py checks it, and
# ``python -m benchmarks.static_resources`` writes the full table
# (benchmarks/RESULTS.md). float32 (IEEE dots on CUDA cores, accumulators and
# operands twice the size) gets small tiles and 8 warps.
#   fwd:   BM query rows per program, BN keys per step
#   fused: BM query rows per step, BN keys per outer step (one program per pair)
#   dkdv:  BN keys per program, BM query rows per step
#   dq:    BM query rows per program, BN keys per step (also the shared-q dQ kernel)
_CONFIGS = {
    ("fwd", "hopper", 2): {
        32: [(128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 3), (64, 32, 4, 2)],
        64: [(128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 128, 8, 2)],
        128: [(128, 64, 8, 3), (64, 64, 4, 3), (64, 32, 4, 3), (128, 32, 8, 2)],
    },
    ("fwd", "ampere", 2): {
        32: [(128, 64, 4, 2), (64, 64, 4, 2), (64, 32, 4, 3)],
        64: [(64, 64, 4, 2), (64, 32, 4, 3), (128, 32, 4, 3), (128, 64, 8, 2)],
        128: [(64, 32, 8, 2), (32, 64, 4, 2), (32, 32, 4, 2)],
    },
    ("fused", "hopper", 2): {
        32: [(64, 64, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2)],
        64: [(64, 64, 8, 2), (32, 64, 4, 2), (32, 128, 8, 2), (64, 64, 8, 1)],
        128: [(32, 64, 8, 2), (32, 32, 8, 2), (32, 32, 4, 2)],
    },
    ("fused", "ampere", 2): {
        32: [(32, 64, 4, 2), (64, 64, 8, 2)],
        64: [(32, 64, 4, 2), (32, 128, 8, 2)],
        128: [(32, 64, 8, 2), (32, 32, 8, 2)],
    },
    # the fused kernel without dQ (a shared prompt q): other register allocation, own list
    ("fused_nodq", "hopper", 2): {
        32: [(64, 64, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2)],
        64: [(64, 64, 8, 2), (32, 64, 4, 2), (32, 128, 8, 2), (64, 64, 8, 1)],
        128: [(32, 64, 8, 2), (32, 32, 8, 2), (64, 32, 8, 2), (32, 32, 4, 2)],
    },
    ("fused_nodq", "ampere", 2): {
        32: [(64, 64, 8, 1), (32, 64, 4, 2)],
        64: [(64, 64, 8, 1)],
        128: [(32, 32, 8, 2), (32, 32, 4, 2)],
    },
    ("dkdv", "hopper", 2): {
        32: [(64, 64, 4, 3), (32, 64, 4, 2)],
        64: [(64, 64, 8, 3), (32, 64, 4, 2)],
        128: [(32, 64, 8, 2), (32, 32, 4, 2), (64, 32, 8, 2)],
    },
    ("dkdv", "ampere", 2): {
        32: [(64, 64, 4, 2), (32, 64, 4, 2)],
        64: [(64, 64, 8, 2), (32, 64, 4, 2)],
        128: [(32, 64, 8, 2), (32, 32, 4, 2)],
    },
    ("dq", "hopper", 2): {
        32: [(64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3)],
        64: [(64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3)],
        128: [(64, 64, 8, 2), (32, 64, 4, 2)],
    },
    ("dq", "ampere", 2): {
        32: [(64, 64, 4, 2), (64, 32, 4, 2), (32, 64, 4, 2)],
        64: [(64, 32, 4, 2), (64, 64, 8, 2), (32, 64, 4, 2)],
        128: [(64, 32, 8, 2), (32, 64, 8, 2), (32, 32, 4, 2)],
    },
}
_FP32 = {  # both archs; software pipelining (num_stages > 1) makes the float32 FMA dots spill: one stage
    "fwd": {32: [(64, 32, 8, 1), (32, 64, 8, 1), (16, 64, 4, 1)], 64: [(32, 64, 8, 1), (16, 64, 4, 1)],
            128: [(16, 32, 8, 1)]},  # D=64 (64, 32, 8, 1) spills 12 B on sm_90 at T=96
    # fused: D=32 (64, 64, 8, 1) spills 1876 B on sm_90 at cross-frame T=33
    "fused": {32: [(32, 64, 8, 1)], 64: [(16, 32, 4, 1)], 128: [(16, 16, 4, 1)]},
    "fused_nodq": {32: [(32, 32, 8, 1), (32, 64, 8, 1)], 64: [(16, 32, 4, 1)], 128: [(16, 16, 4, 1)]},
    # dkdv: D=32 (64, 64, 8, 1) spills 24 B on sm_80 (prompt N=577); D=64 (32, 32, 4, 1), (16, 64, 8, 1) 8-28 B (T=96, N=577)
    "dkdv": {32: [(32, 64, 8, 1)], 64: [(32, 32, 8, 1)],
             128: [(16, 16, 4, 1), (32, 32, 8, 1)]},
    "dq": {32: [(32, 64, 8, 1), (16, 64, 4, 1), (32, 32, 4, 1)], 64: [(16, 64, 4, 1), (16, 32, 4, 1)],
           128: [(16, 16, 8, 1)]},  # BN = 32 spills 8-16 B (dQ, shared-q dQ) on sm_90; 4 warps spill 200+ B
}
for _kind, _table in _FP32.items():
    for _arch in ("hopper", "ampere"):
        _CONFIGS[(_kind, _arch, 4)] = _table


def tile_configs(kind: str, bd: int, arch: str | None = None, elt: int = 2) -> list[dict]:
    """Autotune candidates of a G = 1 kernel (``kind``: fwd, fused, fused_nodq, dkdv, dq) for padded head dim ``bd``
    and element size ``elt`` (2: bf16 / fp16, 4: fp32)."""
    return _tile_configs(kind, bd, arch or _gpu_arch(), elt)


@functools.lru_cache(maxsize=None)
def _tile_configs(kind: str, bd: int, arch: str, elt: int) -> list[dict]:
    table = _CONFIGS[(kind, "hopper" if arch == "hopper" else "ampere", 4 if elt >= 4 else 2)]
    rows = table[min(128, max(32, bd))]
    return [dict(BM=bm, BN=bn, num_warps=nw, num_stages=ns) for bm, bn, nw, ns in rows]


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
def load_keys(P, P2, bh, t, ok, Lk, M, H, D, sb, st, sh, sd, s2b, s2t, s2h, s2d,
              BD: tl.constexpr, HAS_MSG: tl.constexpr):
    """Rows of one key tile: positions < Lk from ``P``, positions Lk..Lk+M-1 from ``P2`` (``HAS_MSG``)."""
    x = load_tile(P, bh, t, ok & (t < Lk), H, D, sb, st, sh, sd, BD)
    if HAS_MSG:
        tm = t - Lk
        okm = ok & (tm >= 0) & (tm < M)
        xm = load_tile(P2, bh, tl.where(okm, tm, 0), okm, H, D, s2b, s2t, s2h, s2d, BD)
        x = tl.where(okm[:, None], xm, x)
    return x


@triton.jit
def store_keys(P, P2, val, bh, t, ok, Lk, M, H, D, sb, st, sh, sd, s2b, s2t, s2h, s2d,
               BD: tl.constexpr, HAS_MSG: tl.constexpr):
    """Store the rows of a key tile back to their source (patch keys to ``P``, message keys to ``P2``)."""
    store_tile(P, val, bh, t, ok & (t < Lk), H, D, sb, st, sh, sd, BD)
    if HAS_MSG:
        tm = t - Lk
        okm = ok & (tm >= 0) & (tm < M)
        store_tile(P2, val, bh, tl.where(okm, tm, 0), okm, H, D, s2b, s2t, s2h, s2d, BD)


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
    G: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    HAS_MSG: tl.constexpr, PREC: tl.constexpr,
):
    """out = softmax(scale q [K; K2]^T) [V; V2] for G packed (batch, head) pairs x BM query rows.

    K2/V2 (``HAS_MSG``): M extra keys at positions Lk.. of the same key
    sequence, read into the padding of the last key tile.
    """
    nmb = tl.cdiv(Lq, BM)
    pid = tl.program_id(0)
    bh_base = (pid // nmb) * G
    g_r, t_r, bh_r = _rows(bh_base, (pid % nmb) * BM, G, BM)
    row_ok = (t_r < Lq) & (bh_r < BH)
    q = load_tile(Q, bh_r, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([G * BM], float("-inf"), tl.float32)
    l_i = tl.zeros([G * BM], tl.float32)
    acc = tl.zeros([G * BM, BD], tl.float32)
    L_all = Lk + M
    for start_n in range(0, L_all, BN):
        g_c, t_c, bh_c = _rows(bh_base, start_n, G, BN)
        col_ok = bh_c < BH
        k = load_keys(K, K2, bh_c, t_c, col_ok, Lk, M, H, D, skb, skt, skh, skd, s2kb, s2kt, s2kh, s2kd, BD, HAS_MSG)
        v = load_keys(V, V2, bh_c, t_c, col_ok, Lk, M, H, D, svb, svt, svh, svd, s2vb, s2vt, s2vh, s2vd, BD, HAS_MSG)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if G > 1:
            keep = (g_r[:, None] == g_c[None, :]) & (t_c < L_all)[None, :]
        else:
            keep = (t_c < L_all)[None, :]
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        m_i = m_new
    out = acc / l_i[:, None]
    store_tile(O, out, bh_r, t_r, row_ok, H, D, sob, sot, soh, sod, BD)
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(LSE + bh_r.to(tl.int64) * Lq + t_r, lse, mask=row_ok)


@triton.jit
def attn_bwd_fused_kernel(
    Q, K, V, K2, V2, O, DO, LSE, DELTA, DQACC, DQ, DK, DV, DK2, DV2,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    s2kb, s2kt, s2kh, s2kd,
    s2vb, s2vt, s2vh, s2vd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    sqgb, sqgt, sqgh, sqgd,
    skgb, skgt, skgh, skgd,
    svgb, svgt, svgh, svgd,
    s2kgb, s2kgt, s2kgh, s2kgd,
    s2vgb, s2vgt, s2vgh, s2vgd,
    H, Lq, Lk, M, D, scale,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    HAS_MSG: tl.constexpr, WRITE_DQ: tl.constexpr, PREC: tl.constexpr,
):
    """dQ, dK, dV (and dK2, dV2) of one (batch, head) pair in one program, no atomics.

    DELTA: float32 scratch [pairs, Lq]; DQACC: float32 scratch [pairs, Lq, BD]
    (read only after this program wrote it; unused when all keys fit one tile).
    ``WRITE_DQ = False`` skips dQ (a shared prompt q reduces it elsewhere).
    """
    bh = tl.program_id(0)
    qk_scale = scale * 1.4426950408889634
    stat0 = bh.to(tl.int64) * Lq
    ar_m = tl.arange(0, BM)
    ar_d = tl.arange(0, BD)
    for start_m in range(0, Lq, BM):
        t_r = start_m + ar_m
        ok = t_r < Lq
        o = load_tile(O, bh, t_r, ok, H, D, sob, sot, soh, sod, BD).to(tl.float32)
        do = load_tile(DO, bh, t_r, ok, H, D, sdb, sdt, sdh, sdd, BD).to(tl.float32)
        tl.store(DELTA + stat0 + t_r, tl.sum(o * do, 1), mask=ok)
    tl.debug_barrier()  # delta rows written by other threads of this program
    L_all = Lk + M
    for start_n in range(0, L_all, BN):
        t_c = start_n + tl.arange(0, BN)
        col_ok = t_c < L_all
        k = load_keys(K, K2, bh, t_c, col_ok, Lk, M, H, D, skb, skt, skh, skd, s2kb, s2kt, s2kh, s2kd, BD, HAS_MSG)
        v = load_keys(V, V2, bh, t_c, col_ok, Lk, M, H, D, svb, svt, svh, svd, s2vb, s2vt, s2vh, s2vd, BD, HAS_MSG)
        dk = tl.zeros([BN, BD], tl.float32)
        dv = tl.zeros([BN, BD], tl.float32)
        for start_m in range(0, Lq, BM):
            t_r = start_m + ar_m
            row_ok = t_r < Lq
            q = load_tile(Q, bh, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
            do = load_tile(DO, bh, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
            lse2 = tl.load(LSE + stat0 + t_r, mask=row_ok, other=0.0) * 1.4426950408889634
            delta = tl.load(DELTA + stat0 + t_r, mask=row_ok, other=0.0)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
            if WRITE_DQ:
                dq = tl.dot(ds.to(k.dtype), k, input_precision=PREC)
                acc_ptr = DQACC + (stat0 + t_r)[:, None] * BD + ar_d[None, :]
                if start_n > 0:
                    dq += tl.load(acc_ptr, mask=row_ok[:, None], other=0.0, cache_modifier=".cg")
                if start_n + BN >= L_all:
                    store_tile(DQ, dq * scale, bh, t_r, row_ok, H, D, sqgb, sqgt, sqgh, sqgd, BD)
                else:
                    tl.store(acc_ptr, dq, mask=row_ok[:, None])
        store_keys(DK, DK2, dk * scale, bh, t_c, col_ok, Lk, M, H, D, skgb, skgt, skgh, skgd,
                   s2kgb, s2kgt, s2kgh, s2kgd, BD, HAS_MSG)
        store_keys(DV, DV2, dv, bh, t_c, col_ok, Lk, M, H, D, svgb, svgt, svgh, svgd,
                   s2vgb, s2vgt, s2vgh, s2vgd, BD, HAS_MSG)
        tl.debug_barrier()  # dQ scratch rows written by other threads of this program


@triton.jit
def attn_bwd_dkdv_kernel(
    Q, K, V, K2, V2, O, DO, LSE, DK, DV, DK2, DV2,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    s2kb, s2kt, s2kh, s2kd,
    s2vb, s2vt, s2vh, s2vd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    skgb, skgt, skgh, skgd,
    svgb, svgt, svgh, svgd,
    s2kgb, s2kgt, s2kgh, s2kgd,
    s2vgb, s2vgt, s2vgh, s2vgd,
    H, Lq, Lk, M, D, scale,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, HAS_MSG: tl.constexpr, PREC: tl.constexpr,
):
    """General path: dK, dV of BN keys of one pair, looping over all query rows (delta recomputed per row tile).

    A shared query (batch stride 0) is read in place for every batch.
    """
    L_all = Lk + M
    nnb = tl.cdiv(L_all, BN)
    pid = tl.program_id(0)
    bh = pid // nnb
    t_c = (pid % nnb) * BN + tl.arange(0, BN)
    col_ok = t_c < L_all
    k = load_keys(K, K2, bh, t_c, col_ok, Lk, M, H, D, skb, skt, skh, skd, s2kb, s2kt, s2kh, s2kd, BD, HAS_MSG)
    v = load_keys(V, V2, bh, t_c, col_ok, Lk, M, H, D, svb, svt, svh, svd, s2vb, s2vt, s2vh, s2vd, BD, HAS_MSG)
    qk_scale = scale * 1.4426950408889634
    stat0 = bh.to(tl.int64) * Lq
    dk = tl.zeros([BN, BD], tl.float32)
    dv = tl.zeros([BN, BD], tl.float32)
    for start_m in range(0, Lq, BM):
        t_r = start_m + tl.arange(0, BM)
        row_ok = t_r < Lq
        q = load_tile(Q, bh, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
        do = load_tile(DO, bh, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
        o = load_tile(O, bh, t_r, row_ok, H, D, sob, sot, soh, sod, BD)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
        lse2 = tl.load(LSE + stat0 + t_r, mask=row_ok, other=0.0) * 1.4426950408889634
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dv += tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC)
    store_keys(DK, DK2, dk * scale, bh, t_c, col_ok, Lk, M, H, D, skgb, skgt, skgh, skgd,
               s2kgb, s2kgt, s2kgh, s2kgd, BD, HAS_MSG)
    store_keys(DV, DV2, dv, bh, t_c, col_ok, Lk, M, H, D, svgb, svgt, svgh, svgd,
               s2vgb, s2vgt, s2vgh, s2vgd, BD, HAS_MSG)


@triton.jit
def attn_bwd_dq_kernel(
    Q, K, V, K2, V2, O, DO, LSE, DQ,
    sqb, sqt, sqh, sqd,
    skb, skt, skh, skd,
    svb, svt, svh, svd,
    s2kb, s2kt, s2kh, s2kd,
    s2vb, s2vt, s2vh, s2vd,
    sob, sot, soh, sod,
    sdb, sdt, sdh, sdd,
    sqgb, sqgt, sqgh, sqgd,
    H, Lq, Lk, M, D, scale,
    BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr, HAS_MSG: tl.constexpr, PREC: tl.constexpr,
):
    """General path: dQ of BM query rows of one pair, looping over the keys of both sources."""
    nmb = tl.cdiv(Lq, BM)
    pid = tl.program_id(0)
    bh = pid // nmb
    t_r = (pid % nmb) * BM + tl.arange(0, BM)
    row_ok = t_r < Lq
    q = load_tile(Q, bh, t_r, row_ok, H, D, sqb, sqt, sqh, sqd, BD)
    do = load_tile(DO, bh, t_r, row_ok, H, D, sdb, sdt, sdh, sdd, BD)
    o = load_tile(O, bh, t_r, row_ok, H, D, sob, sot, soh, sod, BD)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    lse2 = tl.load(LSE + bh.to(tl.int64) * Lq + t_r, mask=row_ok, other=0.0) * 1.4426950408889634
    qk_scale = scale * 1.4426950408889634
    dq = tl.zeros([BM, BD], tl.float32)
    L_all = Lk + M
    for start_n in range(0, L_all, BN):
        t_c = start_n + tl.arange(0, BN)
        col_ok = t_c < L_all
        k = load_keys(K, K2, bh, t_c, col_ok, Lk, M, H, D, skb, skt, skh, skd, s2kb, s2kt, s2kh, s2kd, BD, HAS_MSG)
        v = load_keys(V, V2, bh, t_c, col_ok, Lk, M, H, D, svb, svt, svh, svd, s2vb, s2vt, s2vh, s2vd, BD, HAS_MSG)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.where(row_ok[:, None] & col_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
    store_tile(DQ, dq * scale, bh, t_r, row_ok, H, D, sqgb, sqgt, sqgh, sqgd, BD)


# --- launch helpers -------------------------------------------------------------------


def forward(q, k, v, k2, v2, Lq, Lk, M, BH, H, D, scale, out_shape, tag, G=None, packed=None):
    """Launch the forward kernel (k2/v2: message keys, or None) and return (out, lse).

    ``packed``: (configs, interp) of the packed G > 1 tiles (cross-frame), else the G = 1 tiles.
    """
    out = empty(out_shape, q.dtype, q.device)
    lse = empty((BH // H, H, Lq), torch.float32, q.device)
    has_msg = k2 is not None
    k2, v2 = (k2, v2) if has_msg else (k, v)
    bd = block_d(D)
    args = (q, k, v, k2, v2, out, lse,
            *strides4(q), *strides4(k), *strides4(v), *strides4(k2), *strides4(v2), *strides4(out),
            BH, H, Lq, Lk, M if has_msg else 0, D, scale)
    fixed = dict(BD=bd, HAS_MSG=has_msg, PREC=dot_precision(q.dtype))
    grid = lambda m: (triton.cdiv(BH, m["G"]) * triton.cdiv(Lq, m["BM"]),)  # noqa: E731
    if packed is not None:
        configs, interp = packed
        launch(attn_fwd_kernel, grid, args, fixed, configs, interp, ["Lq", "D"], tag)
    else:
        fixed["G"] = 1
        launch(attn_fwd_kernel, grid, args, fixed, tile_configs("fwd", bd, elt=q.element_size()), INTERP_TILE,
               ["Lq", "Lk", "M", "D"], tag)
    return out, lse


def _min_bn(kind: str, bd: int, elt: int) -> int:
    if interpreting():
        return INTERP_TILE["BN"]
    return min(c["BN"] for c in tile_configs(kind, bd, elt=elt))


def backward(do, q, k, v, k2, v2, out, lse, Lq, Lk, M, BH, H, D, scale, grads, tag, write_dq=True):
    """dQ, dK, dV (+ dK2, dV2) into ``grads`` (dq first; dq ignored when not ``write_dq``).

    One launch (fused) up to :data:`FUSED_MAX_KEYS` keys (see :func:`use_fused`), else two (dK/dV, dQ).
    """
    has_msg = k2 is not None
    if has_msg:
        dq, dk, dv, dk2, dv2 = grads
    else:
        dq, dk, dv = grads
        k2, v2, dk2, dv2 = k, v, dk, dv
    m = M if has_msg else 0
    bd = block_d(D)
    prec = dot_precision(q.dtype)
    dev = q.device
    if not write_dq:
        dq = dk  # never written (WRITE_DQ=False / no dQ launch)
    key = ["Lq", "Lk", "M", "D"]
    if use_fused(BH, Lk + m):
        delta = empty((BH * Lq,), torch.float32, dev)
        elt = q.element_size()
        kind = "fused" if write_dq else "fused_nodq"
        need_acc = write_dq and Lk + m > _min_bn(kind, bd, elt)
        dqacc = empty((BH * Lq * bd,), torch.float32, dev) if need_acc else delta
        args = (q, k, v, k2, v2, out, do, lse, delta, dqacc, dq, dk, dv, dk2, dv2,
                *strides4(q), *strides4(k), *strides4(v), *strides4(k2), *strides4(v2), *strides4(out),
                *strides4(do), *strides4(dq), *strides4(dk), *strides4(dv), *strides4(dk2), *strides4(dv2),
                H, Lq, Lk, m, D, scale)
        fixed = dict(BD=bd, HAS_MSG=has_msg, WRITE_DQ=write_dq, PREC=prec)
        launch(attn_bwd_fused_kernel, lambda meta: (BH,), args, fixed, tile_configs(kind, bd, elt=elt),
               INTERP_TILE,
               key, (tag, "fused", write_dq))
        return
    args = (q, k, v, k2, v2, out, do, lse, dk, dv, dk2, dv2,
            *strides4(q), *strides4(k), *strides4(v), *strides4(k2), *strides4(v2), *strides4(out),
            *strides4(do), *strides4(dk), *strides4(dv), *strides4(dk2), *strides4(dv2),
            H, Lq, Lk, m, D, scale)
    fixed = dict(BD=bd, HAS_MSG=has_msg, PREC=prec)
    grid = lambda meta: (BH * triton.cdiv(Lk + m, meta["BN"]),)  # noqa: E731
    launch(attn_bwd_dkdv_kernel, grid, args, fixed, tile_configs("dkdv", bd, elt=q.element_size()), INTERP_TILE,
           key, (tag, "dkdv"))
    if not write_dq:
        return
    args = (q, k, v, k2, v2, out, do, lse, dq,
            *strides4(q), *strides4(k), *strides4(v), *strides4(k2), *strides4(v2), *strides4(out),
            *strides4(do), *strides4(dq), H, Lq, Lk, m, D, scale)
    grid = lambda meta: (BH * triton.cdiv(Lq, meta["BM"]),)  # noqa: E731
    launch(attn_bwd_dq_kernel, grid, args, fixed, tile_configs("dq", bd, elt=q.element_size()), INTERP_TILE,
           key, (tag, "dq"))
