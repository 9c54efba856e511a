"""``xclip::cross_frame_attn``: the T message tokens of each video attend to each other.

q, k, v: [B, T, H, D] -> out [B, T, H, D]; lse [B, H, T].

``xclip::cross_frame_attn_packed(qkv [B, T, 3, H, D])``: the same on the packed
projection; its backward returns one packed gradient ``[B, T, 3, H, D]``.
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import _DTYPES, AttentionOp, PackedSpec, check_dim, check_head_dim, check_same, check_tensor

NAME = "cross_frame_attn"
LAYOUT = "[B, T, H, D]"


def describe(q, k, v) -> OpInputs:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(NAME, name, t, (4,), LAYOUT)
    check_same(NAME, "q", q, {"k": k, "v": v})
    for name, t in (("k", k), ("v", v)):
        for dim, what in ((0, "batch B"), (1, "frames T"), (2, "heads H"), (3, "head_dim D")):
            check_dim(NAME, name, t, dim, q.shape[dim], f"{what} (dim {dim})")
    check_head_dim(NAME, "q", q)
    if q.shape[1] == 0 and q.shape[0] != 0:
        raise ValueError(f"{NAME}: argument 'k' has no frames (shape {tuple(k.shape)}), expected T >= 1")
    B, T, H, D = q.shape
    return OpInputs(NAME, q.device, q.dtype, D, B * H, T, T)


def sizes(q, k, v) -> tuple:
    """(head_dim, batch_heads, q_len, kv_len, num_msg) of valid inputs; else :func:`describe` raises."""
    try:
        s = q.shape
        dev = q.device
        if (len(s) == 4 and k.shape == s and v.shape == s and s[3] and (s[1] or not s[0])
                and q.dtype in _DTYPES and k.dtype == q.dtype and v.dtype == q.dtype
                and k.device == dev and v.device == dev):
            return s[3], s[0] * s[2], s[1], s[1], 0
    except AttributeError:
        pass
    describe(q, k, v)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


def _matmul_flops(q, k, v) -> int:
    B, T, H, D = q
    return 2 * B * H * T * k[1] * D


op = AttentionOp(
    NAME,
    ("q", "k", "v"),
    describe,
    sizes,
    out_shape=lambda q, k, v: tuple(q.shape),
    lse_shape=lambda q, k, v: (q.shape[0], q.shape[2], q.shape[1]),
    matmul_flops=_matmul_flops,
)


# --- the packed variant -----------------------------------------------------------

PACKED = NAME + "_packed"


def describe_packed(qkv) -> OpInputs:
    check_tensor(PACKED, "qkv", qkv, (5,), "[B, T, 3, H, D]")
    check_dim(PACKED, "qkv", qkv, 2, 3, "the q/k/v axis (dim 2)")
    return describe(*qkv.unbind(2))


def sizes_packed(qkv) -> tuple:
    try:
        s = qkv.shape
        if len(s) == 5 and s[2] == 3 and s[4] and (s[1] or not s[0]) and qkv.dtype in _DTYPES:
            return s[4], s[0] * s[3], s[1], s[1], 0
    except AttributeError:
        pass
    describe_packed(qkv)
    raise AssertionError("unreachable: describe accepted what sizes rejected")


packed_op = AttentionOp(
    PACKED,
    ("qkv",),
    describe_packed,
    sizes_packed,
    out_shape=lambda qkv: (qkv.shape[0], qkv.shape[1], qkv.shape[3], qkv.shape[4]),
    lse_shape=lambda qkv: (qkv.shape[0], qkv.shape[3], qkv.shape[1]),
    matmul_flops=_matmul_flops,
    packed=PackedSpec(NAME, (3,)),
)
