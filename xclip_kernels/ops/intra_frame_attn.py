"""``xclip::intra_frame_attn``: each frame's N patch queries attend to its own N
patch keys plus its M message keys, without materialising the concatenation.

q, k, v: [F, N, H, D]; k_msg, v_msg: [F, M, H, D] -> out [F, N, H, D]; lse [F, H, N].
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import MAX_MSG, AttentionOp, check_dim, check_head_dim, check_same, check_tensor

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


def _matmul_flops(q, k, v, k_msg, v_msg) -> int:
    F, N, H, D = q
    return 2 * F * H * N * (k[1] + k_msg[1]) * D


op = AttentionOp(
    NAME,
    ("q", "k", "v", "k_msg", "v_msg"),
    describe,
    out_shape=lambda q, *_: tuple(q.shape),
    lse_shape=lambda q, *_: (q.shape[0], q.shape[2], q.shape[1]),
    matmul_flops=_matmul_flops,
)
