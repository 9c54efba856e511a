"""``xclip::prompt_cross_attn``: class-text queries attend to one video's visual tokens.

q: [B, K, H, D], or [K, H, D] shared by all B videos (read in place, its
gradient summed over videos); k, v: [B, N, H, D] -> out [B, K, H, D]; lse [B, H, K].
"""

from __future__ import annotations

from ..backends import OpInputs
from ._common import AttentionOp, check_dim, check_head_dim, check_same, check_tensor

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


def _out_shape(q, k, v):
    return (k.shape[0], *q.shape[-3:])


def _matmul_flops(q, k, v) -> int:
    B, N, H, D = k
    return 2 * B * H * q[-3] * N * D


op = AttentionOp(
    NAME,
    ("q", "k", "v"),
    describe,
    out_shape=_out_shape,
    lse_shape=lambda q, k, v: (k.shape[0], k.shape[2], q.shape[-3]),
    matmul_flops=_matmul_flops,
)
