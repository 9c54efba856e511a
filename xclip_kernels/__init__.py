"""Fused attention ops for X-CLIP (cross-frame, intra-frame, prompt cross-attention).

Layout everywhere is ``[batch, seq, heads, head_dim]`` (the flash-attn layout).
``scale=None`` means ``head_dim ** -0.5``; ``backend=None`` means auto
(overridable with the ``XCLIP_KERNELS_BACKEND`` environment variable).
"""

from __future__ import annotations

from torch import Tensor

from . import _extension  # noqa: F401  (loads xclip_kernels._C when it was built)
from .backends import AUTO_ORDER, BACKEND_NAMES, BackendStatus, available_backends
from .ops import cross_frame_attn as _cf
from .ops import intra_frame_attn as _if
from .ops import prompt_cross_attn as _pc

__version__ = "0.1.0"

__all__ = [
    "cross_frame_attn",
    "intra_frame_attn",
    "prompt_cross_attn",
    "cross_frame_attn_packed",
    "intra_frame_attn_packed",
    "prompt_cross_attn_packed",
    "available_backends",
    "BackendStatus",
    "BACKEND_NAMES",
    "AUTO_ORDER",
    "build_info",
]


def cross_frame_attn(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, backend: str | None = None) -> Tensor:
    """Message-token attention across the T frames of each video.

    q, k, v: ``[B, T, H, D]`` -> ``[B, T, H, D]``.
    """
    return _cf.op(q, k, v, scale=scale, backend=backend)


def intra_frame_attn(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    k_msg: Tensor,
    v_msg: Tensor,
    *,
    scale: float | None = None,
    backend: str | None = None,
) -> Tensor:
    """Patch tokens attend to their frame's patches plus its M message tokens.

    q, k, v: ``[F, N, H, D]``; k_msg, v_msg: ``[F, M, H, D]`` (1 <= M <= 8)
    -> ``[F, N, H, D]``. Equals attention over ``cat(k, k_msg)`` /
    ``cat(v, v_msg)`` without building the concatenation.
    """
    return _if.op(q, k, v, k_msg, v_msg, scale=scale, backend=backend)


def prompt_cross_attn(q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, backend: str | None = None) -> Tensor:
    """Class-text queries attend to one video's visual tokens.

    q: ``[B, K, H, D]`` or ``[K, H, D]`` shared by all videos; k, v:
    ``[B, N, H, D]`` -> ``[B, K, H, D]``.
    """
    return _pc.op(q, k, v, scale=scale, backend=backend)


# --- packed variants: the ops on a packed projection, one packed gradient back -----


def cross_frame_attn_packed(qkv: Tensor, *, scale: float | None = None, backend: str | None = None) -> Tensor:
    """:func:`cross_frame_attn` on the packed projection ``qkv [B, T, 3, H, D]`` -> ``[B, T, H, D]``.

    The backward writes one gradient ``[B, T, 3, H, D]`` (no stack of dq, dk, dv).
    """
    return _cf.packed_op(qkv, scale=scale, backend=backend)


def intra_frame_attn_packed(
    qkv: Tensor, kv_msg: Tensor, *, scale: float | None = None, backend: str | None = None
) -> Tensor:
    """:func:`intra_frame_attn` on packed projections: ``qkv [F, N, 3, H, D]``,
    ``kv_msg [F, M, 2, H, D]`` -> ``[F, N, H, D]``; one packed gradient per argument."""
    return _if.packed_op(qkv, kv_msg, scale=scale, backend=backend)


def prompt_cross_attn_packed(q: Tensor, kv: Tensor, *, scale: float | None = None, backend: str | None = None) -> Tensor:
    """:func:`prompt_cross_attn` with k and v packed: ``kv [B, N, 2, H, D]``; one packed gradient for ``kv``."""
    return _pc.packed_op(q, kv, scale=scale, backend=backend)


def build_info() -> dict:
    """How the CUDA extension was built (torch, CUDA, arch list), or why it was not."""
    info = dict(_extension.build_info)
    info["extension_error"] = _extension.error
    return info
