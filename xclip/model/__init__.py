"""The X-CLIP model: configuration, modules, checkpoints (OpenAI CLIP, official X-CLIP, Hugging Face), tokenizer."""

from .safeload import CheckpointError  # noqa: F401  (public as xclip.CheckpointError)
from .config import ARCHS, XCLIPConfig, arch_config
from .model import XCLIP, cpu_supports_bf16, create_model, text_length
from .tokenizer import Tokenizer, tokenize


def load_pretrained(path, num_frames=None, **kwargs):
    """Load an OpenAI CLIP, official X-CLIP or Hugging Face X-CLIP checkpoint (see :mod:`xclip.model.checkpoints`)."""
    from .checkpoints import load_pretrained as _load

    return _load(path, num_frames=num_frames, **kwargs)


__all__ = ["XCLIP", "XCLIPConfig", "ARCHS", "arch_config", "create_model", "cpu_supports_bf16", "text_length",
           "load_pretrained", "tokenize", "Tokenizer"]
