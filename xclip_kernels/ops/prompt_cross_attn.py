"""``xclip::prompt_cross_attn``: class-text queries attend to one video's visual tokens.

q: [B, K, H, D], or [K, H, D] shared by all B videos (read in place, its
gradient summed over videos); k, v: [B, N, H, D] -> out [B, K, H, D]; lse [B, H, K].

``xclip::prompt_cross_attn_packed(q, kv [B, N, 2, H, D])``: the same with k and v
packed; its backward returns one packed gradient for ``kv``.
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import _DTYPES, AttentionOp, PackedSpec, check_dim, check_head_dim, check_same, check_tensor

NAME = "prompt_cross_attn"


def describe(q, k, v) -> OpInputs:
    check_tensor(NAME, "q", q, (3, 4), "[B, K, H, D] or shared [K, H, D]")
    for name, t in (("k", k), ("v", v)):
        check_tensor(NAME, name, t, (4,), "[B, N, H, D]")
    check_same(NAME, "q", q, {"k": k, "v": v})
    for dim, what in ((0, "batch B"), (1, "tokens N"), (2, "heads H"), (3, "head_dim D")):
        check_dim(NAME, "v", v, dim, k.shape[dim], f"{what} (dim {dim}, must match 'k')")
    off = q.dim() - 4  # -1 for shared q
    if q.dim() == 4:
        check_dim(NAME, "k", k, 0, q.shape[0], "batch B (dim 0, must match 'q')")
    check_dim(NAME, "k", k, 2, q.shape[2 + off], f"heads H (dim 2, must match 'q' dim {2 + off})")
    check_dim(NAME, "k", k, 3, q.shape[3 + off], f"head_dim D (dim 3, must match 'q' dim {3 + off})")
    check_head_dim(NAME, "q", q)
    if k.shape[1] == 0 and k.shape[0] != 0:
        raise ValueError(f"{NAME}: argument 'k' has no tokens (shape {tuple(k.shape)}), expected N >= 1")
    B, N, H, D = k.shape
    K = q.shape[1 + off]
    return OpInputs(NAME, q.device, q.dtype, D, B * H, K, N)


def sizes(q, k, v) -> tuple:
    """(head_dim, batch_heads, q_len, kv_len, num_msg) of valid inputs; else :func:`describe` raises."""
    try:
        s = k.shape
        qs = q.shape
        dev, dt = q.device, q.dtype
        if (len(s) == 4 and v.shape == s and (len(qs) == 3 or (len(qs) == 4 and qs[0] == s[0]))
                and qs[-2] == s[2] and qs[-1] == s[3] and s[3] and (s[1] or not s[0])
                and dt in _DTYPES and k.dtype == dt and v.dtype == dt and k.device == dev and v.device == dev):
            return s[3], s[0] * s[2], qs[-3], s[1], 0
    except AttributeError:
        pass
    describe(q, k, v)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


def _out_shape(q, k, v):
    return (k.shape[0], *q.shape[-3:])


def _matmul_flops(q, k, v) -> int:
    B, N, H, D = k
    return 2 * B * H * q[-3] * N * D


op = AttentionOp(
    NAME,
    ("q", "k", "v"),
    describe,
    sizes,
    out_shape=_out_shape,
    lse_shape=lambda q, k, v: (k.shape[0], k.shape[2], q.shape[-3]),
    matmul_flops=_matmul_flops,
)


# --- the packed variant -----------------------------------------------------------

PACKED = NAME + "_packed"


def describe_packed(q, kv) -> OpInputs:
    check_tensor(PACKED, "kv", kv, (5,), "[B, N, 2, H, D]")
    check_dim(PACKED, "kv", kv, 2, 2, "the k/v axis (dim 2)")
    return describe(q, *kv.unbind(2))


def sizes_packed(q, kv) -> tuple:
    try:
        if kv.dim() == 5 and kv.shape[2] == 2:
            k, v = kv.unbind(2)
            return sizes(q, k, v)
    except AttributeError:
        pass
    describe_packed(q, kv)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


packed_op = AttentionOp(
    PACKED,
    ("q", "kv"),
    describe_packed,
    sizes_packed,
    out_shape=lambda q, kv: (kv.shape[0], *q.shape[-3:]),
    lse_shape=lambda q, kv: (kv.shape[0], kv.shape[3], q.shape[-3]),
    matmul_flops=_matmul_flops,
    packed=PackedSpec(NAME, (1, 2)),
)
