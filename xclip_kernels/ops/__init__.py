"""Custom-op registration, one module per op (importing registers them)."""

from . import cross_frame_attn, intra_frame_attn, prompt_cross_attn  # noqa: F401

__all__ = ["cross_frame_attn", "intra_frame_attn", "prompt_cross_attn"]
