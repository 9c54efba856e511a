"""X-CLIP architecture configuration."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["XCLIPConfig", "ARCHS", "arch_config"]


@dataclass
class XCLIPConfig:
    """Every size of an X-CLIP model.

    Heads default as in the official code: ``width // 64`` (at least 1) for the
    vision tower, the MIT and the prompt generator; set ``vision_heads`` /
    ``mit_heads`` / ``prompt_heads`` to override (tiny test models, or Hugging
    Face configs with other head counts).
    """

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    num_frames: int = 8
    mit_layers: int = 1
    prompt_layers: int = 2
    prompt_alpha: float = 0.1
    drop_path: float = 0.0
    cross_frame: bool = True
    vision_heads: int | None = None
    mit_heads: int | None = None
    prompt_heads: int | None = None
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5
    logit_scale_init: float = 2.6592600709  # ln(1 / 0.07), as CLIP and X-CLIP initialise it
    freeze_text: bool = False
    arch: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    # --- derived sizes ----------------------------------------------------------
    @property
    def vision_num_heads(self) -> int:
        return self.vision_heads if self.vision_heads else max(1, self.vision_width // 64)

    @property
    def mit_num_heads(self) -> int:
        return self.mit_heads if self.mit_heads else max(1, self.embed_dim // 64)

    @property
    def prompt_num_heads(self) -> int:
        return self.prompt_heads if self.prompt_heads else max(1, self.embed_dim // 64)

    @property
    def grid_size(self) -> int:
        return self.image_resolution // self.vision_patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def validate(self) -> None:
        ints = (
            "embed_dim image_resolution vision_layers vision_width vision_patch_size context_length vocab_size "
            "transformer_width transformer_heads transformer_layers num_frames prompt_layers mlp_ratio"
        ).split()
        for name in ints:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"XCLIPConfig.{name} must be a positive int, got {v!r}")
        if isinstance(self.mit_layers, bool) or not isinstance(self.mit_layers, int) or self.mit_layers < 0:
            raise ValueError(f"XCLIPConfig.mit_layers must be an int >= 0, got {self.mit_layers!r}")
        for name in ("vision_heads", "mit_heads", "prompt_heads"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"XCLIPConfig.{name} must be None or a positive int, got {v!r}")
        if self.image_resolution % self.vision_patch_size:
            raise ValueError(
                f"XCLIPConfig: image_resolution ({self.image_resolution}) must be a multiple of "
                f"vision_patch_size ({self.vision_patch_size})"
            )
        for width, heads, what in (
            (self.vision_width, self.vision_num_heads, "vision_width / vision heads"),
            (self.transformer_width, self.transformer_heads, "transformer_width / transformer_heads"),
            (self.embed_dim, self.mit_num_heads, "embed_dim / mit heads"),
            (self.embed_dim, self.prompt_num_heads, "embed_dim / prompt heads"),
        ):
            if width % heads:
                raise ValueError(f"XCLIPConfig: {what}: {width} is not divisible by {heads}")
        if not 0.0 <= float(self.drop_path) < 1.0:
            raise ValueError(f"XCLIPConfig.drop_path must be in [0, 1), got {self.drop_path!r}")

    # --- (de)serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "XCLIPConfig":
        if isinstance(d, XCLIPConfig):
            return dataclasses.replace(d)
        if not isinstance(d, dict):
            raise ValueError(f"XCLIPConfig.from_dict expects a dict, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"XCLIPConfig.from_dict: unknown fields {unknown} (known: {sorted(names)})")
        return cls(**d)

    def replace(self, **overrides) -> "XCLIPConfig":
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown XCLIPConfig fields {unknown} (known: {sorted(names)})")
        return dataclasses.replace(self, **overrides)


# The OpenAI CLIP towers X-CLIP starts from.
ARCHS: dict[str, dict[str, int]] = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     transformer_width=512, transformer_heads=8, transformer_layers=12),
    "ViT-L/14": dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     transformer_width=768, transformer_heads=12, transformer_layers=12),
    "ViT-L/14@336": dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                         vision_patch_size=14, transformer_width=768, transformer_heads=12, transformer_layers=12),
}


def arch_config(arch: str, **overrides) -> XCLIPConfig:
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {list(ARCHS)}")
    return XCLIPConfig(**{**ARCHS[arch], "arch": arch}).replace(**overrides)
