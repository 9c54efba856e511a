"""``xclip::cross_frame_attn``: the T message tokens of each video attend to each other.

q, k, v: [B, T, H, D] -> out [B, T, H, D]; lse [B, H, T].
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import AttentionOp, check_dim, check_head_dim, check_same, check_tensor

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


def _matmul_flops(q, k, v) -> int:
    B, T, H, D = q
    return 2 * B * H * T * k[1] * D


op = AttentionOp(
    NAME,
    ("q", "k", "v"),
    describe,
    out_shape=lambda q, k, v: tuple(q.shape),
    lse_shape=lambda q, k, v: (q.shape[0], q.shape[2], q.shape[1]),
    matmul_flops=_matmul_flops,
)
