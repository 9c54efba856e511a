"""X-CLIP in plain PyTorch, computed the way the official code computes it: the oracle.

This module restates the architecture of microsoft/VideoX X-CLIP
(cross-frame communication transformer, multi-frame integration transformer,
video-specific prompt generator) with stock modules only, independently of
:mod:`xclip.model.model` and of the attention ops of ``xclip_kernels``:

- every attention is ``nn.MultiheadAttention`` on sequence-first tensors
  (``[L, N, C]``) except the prompt cross-attention, which (as in the
  official code) is separate q/k/v linears and an explicit softmax;
- the message token is appended to each frame's tokens with ``torch.cat``
  before the frame attention, which therefore attends over ``N + 1`` tokens
  and throws the message token's own output away;
- LayerNorm, QuickGELU and the residual adds are separate modules / ops.

It serves twice: as the tests' oracle (``tests/model/test_model.py`` and
``tests/model/test_plain_baseline.py`` compare our model with it) and as the
``plain`` contender of ``xclip bench`` (the baseline to beat; nothing here
is tuned). Parameter names equal the official state-dict layout, so the
weights of ``xclip``'s model, or of an official checkpoint, load unchanged::

    ref = PlainXCLIP.from_state_dict(model.state_dict(), config=model.config)

Written from a reading of the official model (no code copied).
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

__all__ = ["PlainConfig", "PlainXCLIP"]


@dataclass(frozen=True)
class PlainConfig:
    """The sizes of the reference model (head counts explicit: they cannot be read from weights)."""

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: int = 12
    vision_width: int = 768
    vision_patch_size: int = 16
    vision_heads: int = 12
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 512
    text_heads: int = 8
    text_layers: int = 12
    num_frames: int = 8
    mit_layers: int = 1
    mit_heads: int = 8
    prompt_layers: int = 2
    prompt_heads: int = 8
    prompt_alpha: float = 0.1
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_resolution // self.vision_patch_size

    @classmethod
    def from_xclip_config(cls, cfg) -> "PlainConfig":
        """The same sizes as an :class:`xclip.XCLIPConfig` (its resolved head counts)."""
        if not getattr(cfg, "cross_frame", True):
            raise ValueError("PlainXCLIP: the official architecture has cross-frame communication (cross_frame=False)")
        return cls(
            embed_dim=cfg.embed_dim,
            image_resolution=cfg.image_resolution,
            vision_layers=cfg.vision_layers,
            vision_width=cfg.vision_width,
            vision_patch_size=cfg.vision_patch_size,
            vision_heads=cfg.vision_num_heads,
            context_length=cfg.context_length,
            vocab_size=cfg.vocab_size,
            text_width=cfg.transformer_width,
            text_heads=cfg.transformer_heads,
            text_layers=cfg.transformer_layers,
            num_frames=cfg.num_frames,
            mit_layers=cfg.mit_layers,
            mit_heads=cfg.mit_num_heads,
            prompt_layers=cfg.prompt_layers,
            prompt_heads=cfg.prompt_num_heads,
            prompt_alpha=cfg.prompt_alpha,
            mlp_ratio=cfg.mlp_ratio,
            layer_norm_eps=cfg.layer_norm_eps,
        )


# --- building blocks ------------------------------------------------------------


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def _mlp(width: int, ratio: int, names: bool = True) -> nn.Sequential:
    hidden = ratio * width
    if names:  # CLIP / CCT / MIT blocks: mlp.c_fc, mlp.c_proj
        return nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(hidden, width))])
        )
    # prompt generator: mlp.0, mlp.3 (a dropout sits at index 2)
    return nn.Sequential(nn.Linear(width, hidden), QuickGELU(), nn.Dropout(0.0), nn.Linear(hidden, width))


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block on sequence-first input (CLIP text tower, MIT)."""

    def __init__(self, width: int, heads: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, ratio)
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        h = self.ln_1(x)
        if attn_mask is not None:
            attn_mask = attn_mask.to(dtype=h.dtype, device=h.device)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        x = x + self.mlp(self.ln_2(x))
        return x


class CrossFrameBlock(nn.Module):
    """One block of the cross-frame communication transformer.

    Input ``[L, B*T, C]`` (sequence-first; frames of a video adjacent). The
    class token of each frame is projected to a message token; the T message
    tokens of a video attend to each other; each frame's tokens then attend
    over themselves plus their frame's message token (concatenated).
    """

    def __init__(self, width: int, heads: int, num_frames: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.T = num_frames
        self.message_fc = nn.Linear(width, width)
        self.message_ln = nn.LayerNorm(width, eps=eps)
        self.message_attn = nn.MultiheadAttention(width, heads)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, ratio)
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        L, BT, C = x.shape
        T = self.T
        B = BT // T
        x = x.view(L, B, T, C)
        # message tokens from the class tokens: [B, T, C] -> sequence-first over frames [T, B, C]
        msg = self.message_fc(x[0]).permute(1, 0, 2)
        m = self.message_ln(msg)
        msg = msg + self.message_attn(m, m, m, need_weights=False)[0]
        msg = msg.permute(1, 0, 2).unsqueeze(0)  # [1, B, T, C]
        # append each frame's message token and attend over L + 1 tokens
        x = torch.cat([x, msg], dim=0).view(L + 1, BT, C)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x[:L]
        x = x + self.mlp(self.ln_2(x))
        return x


class _Blocks(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.Sequential(*blocks)


class VisionTower(nn.Module):
    """CLIP ViT with cross-frame blocks. Returns (per-frame class features ``[BT, E]``, patch tokens ``[BT, N, C]``)."""

    def __init__(self, cfg: PlainConfig) -> None:
        super().__init__()
        w = cfg.vision_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.vision_patch_size, stride=cfg.vision_patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid**2 + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.transformer = _Blocks(
            [CrossFrameBlock(w, cfg.vision_heads, cfg.num_frames, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.vision_layers)]
        )
        self.ln_post = nn.LayerNorm(w, eps=cfg.layer_norm_eps)
        self.proj = nn.Parameter(torch.zeros(w, cfg.embed_dim))

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        x = self.conv1(frames)  # [BT, C, g, g]
        x = x.flatten(2).permute(0, 2, 1)  # [BT, g*g, C]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, x.shape[-1])
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = x.permute(1, 0, 2)  # [L, BT, C]
        x = self.transformer.resblocks(x)
        x = x.permute(1, 0, 2)  # [BT, L, C]
        cls_feat = self.ln_post(x[:, 0, :]) @ self.proj
        return cls_feat, x[:, 1:, :]


class MultiframeIntegration(nn.Module):
    """Temporal transformer over the T frame features of each video, mean-pooled, with a skip."""

    def __init__(self, cfg: PlainConfig) -> None:
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.zeros(1, cfg.num_frames, cfg.embed_dim))
        self.resblocks = nn.Sequential(
            *[ResidualAttentionBlock(cfg.embed_dim, cfg.mit_heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.mit_layers)]
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, T, E] -> [B, E]
        skip = x
        x = (x + self.positional_embedding).permute(1, 0, 2)
        for blk in self.resblocks:
            x = blk(x)
        x = x.permute(1, 0, 2).to(skip.dtype) + skip
        return x.mean(dim=1)


class PromptCrossAttention(nn.Module):
    """The official prompt attention: bias-free q/k/v linears, explicit softmax, output projection."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, K, C = q.shape
        N = k.shape[1]
        H = self.heads
        q = self.q_proj(q).reshape(B, K, H, C // H).permute(0, 2, 1, 3)
        k = self.k_proj(k).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
        v = self.v_proj(v).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, K, C)
        return self.proj(out)


class PromptLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ratio: int, eps: float) -> None:
        super().__init__()
        self.cross_attn = PromptCrossAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _mlp(dim, ratio, names=False)

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:
        t = self.norm1(text)
        text = text + self.cross_attn(t, visual, visual)
        text = text + self.mlp(self.norm3(text))
        return text


class VideoSpecificPrompt(nn.Module):
    def __init__(self, cfg: PlainConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.layer_norm_eps)
        self.decoder = nn.ModuleList(
            [PromptLayer(cfg.embed_dim, cfg.prompt_heads, cfg.mlp_ratio, cfg.layer_norm_eps) for _ in range(cfg.prompt_layers)]
        )
        self.alpha = nn.Parameter(torch.full((cfg.embed_dim,), float(cfg.prompt_alpha)))

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:  # text [B, K, E] (expanded), visual [B, N, E]
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        return self.alpha * text


# --- the model --------------------------------------------------------------------


class PlainXCLIP(nn.Module):
    """X-CLIP in plain PyTorch with the official state-dict keys.

    ``forward(video [B, T, 3, H, W], tokens [K, L]) -> logits [B, K]``. For the
    frozen-text setting the text features are computed once
    (:meth:`encode_text`) and passed to :meth:`logits_from_video`.
    """

    def __init__(self, cfg: PlainConfig) -> None:
        super().__init__()
        self.config = cfg
        self.visual = VisionTower(cfg)
        self.transformer = _Blocks(
            [ResidualAttentionBlock(cfg.text_width, cfg.text_heads, cfg.mlp_ratio, cfg.layer_norm_eps)
             for _ in range(cfg.text_layers)]
        )
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.ln_final = nn.LayerNorm(cfg.text_width, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.prompts_visual_ln = nn.LayerNorm(cfg.vision_width, eps=cfg.layer_norm_eps)
        self.prompts_visual_proj = nn.Parameter(torch.zeros(cfg.vision_width, cfg.embed_dim))
        self.prompts_generator = VideoSpecificPrompt(cfg)
        self.mit = MultiframeIntegration(cfg)
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", causal, persistent=False)

    # construction -------------------------------------------------------------

    @classmethod
    def from_arch(cls, arch: str, num_frames: int = 8, **overrides) -> "PlainXCLIP":
        """A randomly initialised model of a named CLIP backbone ("ViT-B/16", ...), heads = width / 64."""
        from .config import ARCHS, arch_config

        if arch not in ARCHS:
            raise ValueError(f"PlainXCLIP.from_arch: unknown arch {arch!r}; expected one of {list(ARCHS)}")
        cfg = PlainConfig.from_xclip_config(arch_config(arch, num_frames=num_frames))
        model = cls(_replace(cfg, overrides))
        model.init_random()
        return model

    @staticmethod
    def config_from_state_dict(state_dict: dict, config=None, **overrides) -> PlainConfig:
        """The architecture official-layout weights describe.

        Head counts cannot be read from weights: they come from ``config`` (an
        :class:`xclip.XCLIPConfig`) when given, else width / 64 (the official
        rule); ``overrides`` (``PlainConfig`` fields) win over both.
        """
        sd = state_dict
        need = ("visual.conv1.weight", "visual.positional_embedding", "text_projection", "mit.positional_embedding",
                "ln_final.weight", "visual.transformer.resblocks.0.mlp.c_fc.weight")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"PlainXCLIP: state dict is not in the official X-CLIP layout (missing {missing})")

        def count(pattern: str) -> int:
            rx = re.compile(pattern)
            return len({m.group(1) for k in sd for m in [rx.match(k)] if m})

        vw, patch = sd["visual.conv1.weight"].shape[0], sd["visual.conv1.weight"].shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        embed, tw = sd["text_projection"].shape[1], sd["ln_final.weight"].shape[0]
        kw = dict(
            embed_dim=embed,
            image_resolution=grid * patch,
            vision_layers=count(r"visual\.transformer\.resblocks\.(\d+)\."),
            vision_width=vw,
            vision_patch_size=patch,
            vision_heads=max(1, vw // 64),
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            text_width=tw,
            text_heads=max(1, tw // 64),
            text_layers=count(r"transformer\.resblocks\.(\d+)\."),
            num_frames=sd["mit.positional_embedding"].shape[1],
            mit_layers=count(r"mit\.resblocks\.(\d+)\."),
            mit_heads=max(1, embed // 64),
            prompt_layers=count(r"prompts_generator\.decoder\.(\d+)\."),
            prompt_heads=max(1, embed // 64),
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] // vw,
        )
        if config is not None:
            given = PlainConfig.from_xclip_config(config)
            kw.update({k: getattr(given, k) for k in ("vision_heads", "text_heads", "mit_heads", "prompt_heads",
                                                       "layer_norm_eps")})
        return _replace(PlainConfig(**kw), overrides)

    @classmethod
    def from_state_dict(cls, state_dict: dict, config=None, strict: bool = True, **overrides) -> "PlainXCLIP":
        """Build the architecture the weights describe and load them (official key layout)."""
        model = cls(cls.config_from_state_dict(state_dict, config, **overrides))
        sd = {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
        model.load_state_dict(sd, strict=strict)
        return model

    @classmethod
    def from_model(cls, model: nn.Module) -> "PlainXCLIP":
        """The reference computation on a copy of an ``xclip.XCLIP``'s weights, with its head counts."""
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref = cls.from_state_dict(sd, config=model.config)
        return ref.to(dtype=next(model.parameters()).dtype)

    @torch.no_grad()
    def init_random(self, seed: int | None = None) -> None:
        """A CLIP-like random initialisation (for benchmarks; values are not learned)."""
        g = torch.Generator().manual_seed(seed) if seed is not None else None

        def normal_(t: Tensor, std: float) -> None:
            t.copy_(torch.randn(t.shape, generator=g) * std)

        for name, p in self.named_parameters():
            if name.endswith("alpha"):
                p.fill_(self.config.prompt_alpha)
            elif name == "logit_scale":
                p.fill_(math.log(1 / 0.07))
            elif p.dim() == 1 and (".ln" in name or "norm" in name or name.startswith("ln") or "_ln" in name):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name in ("visual.class_embedding", "visual.positional_embedding", "visual.proj", "prompts_visual_proj"):
                normal_(p, self.config.vision_width**-0.5)
            elif name == "text_projection":
                normal_(p, self.config.text_width**-0.5)
            else:
                normal_(p, 0.02)

    # forward ------------------------------------------------------------------

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``[K, L]`` token ids -> ``[K, E]`` (features of the end-of-text token, the max id)."""
        if tokens.dim() != 2:
            raise ValueError(f"PlainXCLIP.encode_text: tokens must be [K, L], got shape {tuple(tokens.shape)}")
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L].to(self.token_embedding.weight.dtype)
        x = x.permute(1, 0, 2)
        mask = self.attn_mask[:L, :L]
        for blk in self.transformer.resblocks:
            x = blk(x, attn_mask=mask)
        x = self.ln_final(x.permute(1, 0, 2))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return eot @ self.text_projection

    def encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, T, 3, H, W]`` -> (video features ``[B, E]``, patch features ``[B, T, N, E]``)."""
        if video.dim() != 5:
            raise ValueError(f"PlainXCLIP.encode_video: video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        B, T = video.shape[:2]
        if T != self.config.num_frames:
            raise ValueError(f"PlainXCLIP.encode_video: video has {T} frames, the model was built for {self.config.num_frames}")
        cls_feat, patches = self.visual(video.flatten(0, 1))
        patches = self.prompts_visual_ln(patches) @ self.prompts_visual_proj
        video_feat = self.mit(cls_feat.view(B, T, -1))
        return video_feat, patches.view(B, T, patches.shape[1], -1)

    def logits_from_features(self, video_feat: Tensor, patch_feat: Tensor, text_feat: Tensor) -> Tensor:
        """Video-specific prompting and cosine logits (``[B, K]``, logit scale applied)."""
        B = video_feat.shape[0]
        visual = patch_feat.mean(dim=1)  # average the patch features over frames: [B, N, E]
        text = text_feat.unsqueeze(0).expand(B, -1, -1)
        text = text + self.prompts_generator(text, visual)
        v = video_feat / video_feat.norm(dim=-1, keepdim=True)
        t = text / text.norm(dim=-1, keepdim=True)
        return torch.einsum("bd,bkd->bk", v, self.logit_scale.exp() * t)

    def logits_from_video(self, video: Tensor, text_feat: Tensor) -> Tensor:
        return self.logits_from_features(*self.encode_video(video), text_feat)

    def forward(self, video: Tensor, tokens: Tensor) -> Tensor:
        return self.logits_from_video(video, self.encode_text(tokens))

    def text_parameter_names(self) -> list[str]:
        """The parameters the official recipe freezes (FIX_TEXT): everything not visual / mit / prompts."""
        return [n for n, _ in self.named_parameters() if not ("visual." in n or "mit" in n or "prompts" in n)]


def _replace(cfg: PlainConfig, overrides: dict) -> PlainConfig:
    unknown = set(overrides) - {f.name for f in fields(PlainConfig)}
    if unknown:
        raise ValueError(f"PlainXCLIP: unknown config overrides {sorted(unknown)}")
    return PlainConfig(**{**{f.name: getattr(cfg, f.name) for f in fields(PlainConfig)}, **overrides})
