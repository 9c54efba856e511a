"""Triton kernels of ``intra_frame_attn``: each frame's N patch queries attend to
its N patch keys plus its M message keys.

q, k, v ``[F, N, H, D]``; k_msg, v_msg ``[F, M, H, D]`` -> ``[F, N, H, D]``.

The M message keys are key positions N..N+M-1 of one key sequence: they are
loaded into the padding of the last key tile (``_common.load_keys``), so
``cat(k, k_msg)`` is never built and they cost no extra online-softmax step
and no launch of their own. Forward: one launch. Backward: one launch (one
program per (frame, head) computes delta, dQ, dK, dV, dK_msg, dV_msg) up to
``_common.FUSED_MAX_KEYS`` keys, else two (dK/dV with dK_msg/dV_msg, dQ).
"""

from __future__ import annotations

from . import _common as C


def not_supported_reasons(inputs) -> list[str]:
    return C.head_dim_reasons(inputs)


def forward(q, k, v, k_msg, v_msg, scale):
    F, N, H, D = q.shape
    M = k_msg.shape[1]
    return C.forward(q, k, v, k_msg, v_msg, N, N, M, F * H, H, D, scale, (F, N, H, D), "if_fwd")


def backward(do, q, k, v, k_msg, v_msg, out, lse, scale, grads=None):
    """Gradients of (q, k, v, k_msg, v_msg), written into ``grads`` (any strides) when given."""
    F, N, H, D = q.shape
    M = k_msg.shape[1]
    grads = C.grad_buffers(grads, (q, k, v, k_msg, v_msg), q.device)
    C.backward(do, q, k, v, k_msg, v_msg, out, lse, N, N, M, F * H, H, D, scale, grads, "if")
    return grads
