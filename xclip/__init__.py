"""X-CLIP video recognition on the fused attention kernels of ``xclip_kernels``."""

from .model import CheckpointError, XCLIP, XCLIPConfig, create_model, load_pretrained, tokenize

__all__ = ["CheckpointError", "XCLIP", "XCLIPConfig", "create_model", "load_pretrained", "tokenize"]
