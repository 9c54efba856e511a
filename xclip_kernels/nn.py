"""Drop-in attention modules built on the fused ops.

Parameters are laid out like :class:`torch.nn.MultiheadAttention`
(``in_proj_weight`` ``[3E, E]``, ``in_proj_bias`` ``[3E]``, ``out_proj.weight``,
``out_proj.bias``), so state dicts written for ``nn.MultiheadAttention`` load
into them unchanged. Inputs are batch-first.

Each module does one fused input-projection matmul per input tensor and hands
the packed projection (``[..., 3, H, D]``, a view of the matmul's output) to
the op's packed variant (``xk.*_packed``): the kernels read q, k and v through
their strides, and the backward writes one packed gradient that the
projection's backward consumes as is (no per-head copies forward, no stack of
dq/dk/dv backward).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import cross_frame_attn_packed, intra_frame_attn_packed, prompt_cross_attn_packed
from .backends import BACKEND_NAMES

__all__ = ["CrossFrameAttention", "IntraFrameAttention", "PromptCrossAttention"]


def _check_backend(backend: str | None) -> str | None:
    if backend in (None, "", "auto"):
        return None
    if backend not in BACKEND_NAMES:
        raise ValueError(f"backend must be None, 'auto' or one of {list(BACKEND_NAMES)}, got {backend!r}")
    return backend


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # older torch: no device argument
        return torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled()


class _PackedAttention(nn.Module):
    """Shared parameters and helpers: a packed q/k/v projection and an output projection."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise ValueError(f"embed_dim must be a positive int, got {embed_dim!r}")
        if not isinstance(num_heads, int) or num_heads <= 0:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.backend = _check_backend(backend)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # as nn.MultiheadAttention: xavier-uniform packed projection, zero biases
        nn.init.xavier_uniform_(self.in_proj_weight)
        if self.in_proj_bias is not None:
            nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def set_backend(self, backend: str | None) -> None:
        self.backend = _check_backend(backend)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, bias={self.in_proj_bias is not None}, backend={self.backend}"

    def _check_input(self, name: str, x, ranks: tuple[int, ...], layout: str) -> None:
        if not isinstance(x, Tensor):
            raise ValueError(f"{type(self).__name__}: '{name}' must be a Tensor, got {type(x).__name__}")
        if x.dim() not in ranks:
            raise ValueError(
                f"{type(self).__name__}: '{name}' must be {layout}, got shape {tuple(x.shape)}"
            )
        if x.shape[-1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__}: '{name}' has last dim {x.shape[-1]}, expected embed_dim={self.embed_dim} "
                f"(shape {tuple(x.shape)})"
            )
        w = self.in_proj_weight
        if x.device != w.device:
            raise ValueError(f"{type(self).__name__}: '{name}' is on {x.device} but the module's weights are on "
                             f"{w.device}; move one of them (module.to(device))")
        if x.dtype != w.dtype and not _autocast_on(x.device.type):
            raise ValueError(f"{type(self).__name__}: '{name}' is {x.dtype} but the module's weights are {w.dtype}; "
                             f"convert one of them (module.to(dtype)) or run under torch.autocast")

    def _project(self, x: Tensor, start: int, count: int) -> Tensor:
        """``x @ W[start*E:(start+count)*E].T + b`` viewed as ``[..., count, H, D]``."""
        E = self.embed_dim
        w = self.in_proj_weight[start * E : (start + count) * E]
        b = None if self.in_proj_bias is None else self.in_proj_bias[start * E : (start + count) * E]
        y = F.linear(x, w, b)
        return y.unflatten(-1, (count, self.num_heads, self.head_dim))

    def _out(self, o: Tensor) -> Tensor:
        return self.out_proj(o.flatten(-2))


class CrossFrameAttention(_PackedAttention):
    """Self-attention across the T tokens of each sequence: ``x [B, T, E] -> [B, T, E]``.

    In X-CLIP: the message tokens of one video's T frames (and the MIT's frame features).
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check_input("x", x, (3,), "[B, T, E]")
        qkv = self._project(x, 0, 3)  # [B, T, 3, H, D], a view of one projection
        o = cross_frame_attn_packed(qkv, backend=self.backend)
        return self._out(o)


class IntraFrameAttention(_PackedAttention):
    """Patch tokens attend to their frame's tokens plus its message tokens.

    ``forward(x [F, N, E], msg [F, M, E]) -> [F, N, E]``: both are projected with
    the same ``in_proj`` (as attention over ``cat(x, msg)`` would); only the rows
    of ``x`` are returned, so the message rows' queries are never computed.
    """

    def forward(self, x: Tensor, msg: Tensor) -> Tensor:
        self._check_input("x", x, (3,), "[F, N, E]")
        self._check_input("msg", msg, (3,), "[F, M, E]")
        if msg.shape[0] != x.shape[0]:
            raise ValueError(
                f"IntraFrameAttention: 'msg' has {msg.shape[0]} frames (shape {tuple(msg.shape)}), "
                f"expected {x.shape[0]} (the frames of 'x', shape {tuple(x.shape)})"
            )
        o = intra_frame_attn_packed(self._project(x, 0, 3), self._project(msg, 1, 2), backend=self.backend)
        return self._out(o)


class PromptCrossAttention(_PackedAttention):
    """Queries attend to one video's tokens.

    ``forward(query, key_value [B, N, E]) -> [B, K, E]`` where ``query`` is
    ``[B, K, E]`` or ``[K, E]`` shared by all B videos (never expanded).
    ``bias`` applies to the q/k/v projection (the output projection always has one).
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = False, backend: str | None = None) -> None:
        super().__init__(embed_dim, num_heads, bias=bias, backend=backend)

    def forward(self, query: Tensor, key_value: Tensor) -> Tensor:
        self._check_input("query", query, (2, 3), "[B, K, E] or shared [K, E]")
        self._check_input("key_value", key_value, (3,), "[B, N, E]")
        if query.dim() == 3 and query.shape[0] != key_value.shape[0]:
            raise ValueError(
                f"PromptCrossAttention: 'query' has batch {query.shape[0]} (shape {tuple(query.shape)}), "
                f"expected {key_value.shape[0]} (the batch of 'key_value', shape {tuple(key_value.shape)})"
            )
        q = self._project(query, 0, 1).squeeze(-3)
        o = prompt_cross_attn_packed(q, self._project(key_value, 1, 2), backend=self.backend)
        return self._out(o)
