"""``xclip::intra_frame_attn``: each frame's N patch queries attend to its own N
patch keys plus its M message keys, without materialising the concatenation.

q, k, v: [F, N, H, D]; k_msg, v_msg: [F, M, H, D] -> out [F, N, H, D]; lse [F, H, N].

``xclip::intra_frame_attn_packed(qkv [F, N, 3, H, D], kv_msg [F, M, 2, H, D])``:
the same on the packed projections; its backward returns one packed gradient
per argument.
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import _DTYPES, MAX_MSG, AttentionOp, PackedSpec, check_dim, check_head_dim, check_same, check_tensor

NAME = "intra_frame_attn"


def describe(q, k, v, k_msg, v_msg) -> OpInputs:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(NAME, name, t, (4,), "[F, N, H, D]")
    for name, t in (("k_msg", k_msg), ("v_msg", v_msg)):
        check_tensor(NAME, name, t, (4,), "[F, M, H, D]")
    check_same(NAME, "q", q, {"k": k, "v": v, "k_msg": k_msg, "v_msg": v_msg})
    for name, t in (("k", k), ("v", v)):
        for dim, what in ((0, "frames F"), (1, "tokens N"), (2, "heads H"), (3, "head_dim D")):
            check_dim(NAME, name, t, dim, q.shape[dim], f"{what} (dim {dim})")
    for name, t in (("k_msg", k_msg), ("v_msg", v_msg)):
        for dim, what in ((0, "frames F"), (2, "heads H"), (3, "head_dim D")):
            check_dim(NAME, name, t, dim, q.shape[dim], f"{what} (dim {dim})")
    check_dim(NAME, "v_msg", v_msg, 1, k_msg.shape[1], "messages M (dim 1, must match 'k_msg')")
    M = k_msg.shape[1]
    if not 1 <= M <= MAX_MSG:
        raise ValueError(
            f"{NAME}: argument 'k_msg' has shape {tuple(k_msg.shape)}: M = {M} messages, expected 1 <= M <= {MAX_MSG}"
        )
    check_head_dim(NAME, "q", q)
    F, N, H, D = q.shape
    return OpInputs(NAME, q.device, q.dtype, D, F * H, N, N + M, num_msg=M)


def sizes(q, k, v, k_msg, v_msg) -> tuple:
    """(head_dim, batch_heads, q_len, kv_len, num_msg) of valid inputs; else :func:`describe` raises."""
    try:
        s = q.shape
        m = k_msg.shape
        dev, dt = q.device, q.dtype
        if (len(s) == 4 and k.shape == s and v.shape == s and len(m) == 4 and v_msg.shape == m
                and m[0] == s[0] and m[2] == s[2] and m[3] == s[3] and 1 <= m[1] <= MAX_MSG and s[3]
                and dt in _DTYPES and k.dtype == dt and v.dtype == dt and k_msg.dtype == dt and v_msg.dtype == dt
                and k.device == dev and v.device == dev and k_msg.device == dev and v_msg.device == dev):
            return s[3], s[0] * s[2], s[1], s[1] + m[1], m[1]
    except AttributeError:
        pass
    describe(q, k, v, k_msg, v_msg)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


def _matmul_flops(q, k, v, k_msg, v_msg) -> int:
    F, N, H, D = q
    return 2 * F * H * N * (k[1] + k_msg[1]) * D


op = AttentionOp(
    NAME,
    ("q", "k", "v", "k_msg", "v_msg"),
    describe,
    sizes,
    out_shape=lambda q, *_: tuple(q.shape),
    lse_shape=lambda q, *_: (q.shape[0], q.shape[2], q.shape[1]),
    matmul_flops=_matmul_flops,
)


# --- the packed variant -----------------------------------------------------------

PACKED = NAME + "_packed"


def describe_packed(qkv, kv_msg) -> OpInputs:
    check_tensor(PACKED, "qkv", qkv, (5,), "[F, N, 3, H, D]")
    check_tensor(PACKED, "kv_msg", kv_msg, (5,), "[F, M, 2, H, D]")
    check_dim(PACKED, "qkv", qkv, 2, 3, "the q/k/v axis (dim 2)")
    check_dim(PACKED, "kv_msg", kv_msg, 2, 2, "the k/v axis (dim 2)")
    return describe(*qkv.unbind(2), *kv_msg.unbind(2))


def sizes_packed(qkv, kv_msg) -> tuple:
    try:
        s = qkv.shape
        m = kv_msg.shape
        if (len(s) == 5 and len(m) == 5 and s[2] == 3 and m[2] == 2 and m[0] == s[0] and m[3] == s[3]
                and m[4] == s[4] and 1 <= m[1] <= MAX_MSG and s[4] and qkv.dtype in _DTYPES
                and kv_msg.dtype == qkv.dtype and kv_msg.device == qkv.device):
            return s[4], s[0] * s[3], s[1], s[1] + m[1], m[1]
    except AttributeError:
        pass
    describe_packed(qkv, kv_msg)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


packed_op = AttentionOp(
    PACKED,
    ("qkv", "kv_msg"),
    describe_packed,
    sizes_packed,
    out_shape=lambda qkv, kv_msg: (qkv.shape[0], qkv.shape[1], qkv.shape[3], qkv.shape[4]),
    lse_shape=lambda qkv, kv_msg: (qkv.shape[0], qkv.shape[3], qkv.shape[1]),
    matmul_flops=_matmul_flops,
    packed=PackedSpec(NAME, (3, 2)),
)
