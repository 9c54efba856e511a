"""The model as ``xclip predict`` and ``xclip eval`` run it: ``--dtype`` and ``--compile``.

:func:`inference_model` returns an :class:`InferenceModel`: the model's weights
in the chosen dtype, videos cast to it on the way in, logits returned in
float32 (softmax, top-k and view fusion stay in float32), and, with
``compile=True``, the video side and the head through ``torch.compile``.

Why bf16 is not chosen automatically (float32 stays the default; ``--dtype
bf16`` asks for it). Measured on the 2-core AVX512-BF16 development machine:
bf16 ran the ViT-B/32 video side 3.3x faster than float32 (0.42 s against
1.38 s of CPU per 2 videos x 8 frames, one thread), and on the trained demo
model its top-1 agreed with float32's on all 300 test clips and all 96
held-out clips. But a top-1 flips wherever the two best scores are within
bf16's rounding: on an untrained model (near-equal scores) 2 of 18 clips
changed. Numbers that silently depend on the dtype would break the
float32-equals-training-evaluation guarantee, and a CPU without native bf16
emulates it, slower than float32.

``--compile`` is off by default for the same kind of reason, measured: it did
not pay on the CPU. ViT-B/32: 1.47 s against 1.38 s eager per batch after a
29.5 s compilation; the demo's tiny model: 30% less CPU per batch after 13 s
of compilation, i.e. worth it only past tens of thousands of clips.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

__all__ = ["INFER_DTYPES", "InferenceModel", "inference_model", "add_inference_args"]

log = logging.getLogger("xclip.inference")

INFER_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # names as `xclip bench --dtype`


def add_inference_args(p) -> None:
    """``--dtype`` and ``--compile`` on an argparse parser (predict and eval share them)."""
    p.add_argument("--dtype", default="fp32", choices=list(INFER_DTYPES),
                   help="weights and activations: fp32 (default), bf16 (fast on CPUs with native bf16, e.g. "
                        "AVX512-BF16; top-1 can differ from fp32 on a few videos), fp16 (CUDA only)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the video side and the head (pays off only over many batches)")


class InferenceModel(nn.Module):
    """``model`` in ``dtype`` for inference: the methods :func:`xclip.engine.evaluate` and ``predict`` call."""

    def __init__(self, model: nn.Module, dtype: torch.dtype = torch.float32, compile: bool = False):
        super().__init__()
        self.model = model.to(dtype=dtype)
        self.dtype = dtype
        self.config = model.config
        self.compiled = bool(compile)
        self._encode_video = model.encode_video
        self._logits = model.logits_from_features
        if compile:
            self._encode_video = torch.compile(model.encode_video, dynamic=False)
            self._logits = torch.compile(model.logits_from_features, dynamic=False)

    def encode_video(self, video: torch.Tensor):
        return self._encode_video(video.to(self.dtype))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def logits_from_features(self, video_emb, patch_emb, text_emb) -> torch.Tensor:
        return self._logits(video_emb, patch_emb, text_emb.to(self.dtype)).float()

    def forward(self, video: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        v, p = self.encode_video(video)
        return self.logits_from_features(v, p, self.encode_text(tokens))


def inference_model(model: nn.Module, dtype: str = "fp32", compile: bool = False,
                    device: torch.device | str = "cpu") -> InferenceModel:
    """``model`` on ``device``, in eval mode, as :class:`InferenceModel` (``dtype``: a key of INFER_DTYPES)."""
    if dtype not in INFER_DTYPES:
        raise ValueError(f"--dtype must be one of {list(INFER_DTYPES)}, got {dtype!r}")
    device = torch.device(device)
    if dtype == "fp16" and device.type != "cuda":
        raise ValueError(f"--dtype fp16 needs a CUDA device (device is {device}); use bf16 or fp32 on the CPU")
    if device.type == "cpu":
        from xclip.runtime import keep_freed_memory

        keep_freed_memory()  # every batch allocates the same activations: reuse them (no fresh pages)
    if dtype == "bf16" and device.type == "cpu":
        from xclip.model import cpu_supports_bf16

        if not cpu_supports_bf16():
            log.warning("--dtype bf16: this CPU has no native bf16 (AVX512-BF16 / AMX); it is emulated and "
                        "usually slower than fp32")
    return InferenceModel(model.to(device).eval(), INFER_DTYPES[dtype], compile).eval()
