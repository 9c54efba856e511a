"""The X-CLIP model (Ni et al., ECCV 2022), attention through ``xclip_kernels``.

Module and parameter names follow the official implementation
(microsoft/VideoX, X-CLIP/models), so ``state_dict()`` is an official-format
state dict: ``visual.*`` (the cross-frame communication ViT), ``transformer.*``
/ ``token_embedding`` / ``positional_embedding`` / ``ln_final`` /
``text_projection`` (the CLIP text tower), ``mit.*``, ``prompts_visual_ln``,
``prompts_visual_proj``, ``prompts_generator.*`` and ``logit_scale``.

All tensors are batch-first here (the official code is sequence-first); the
attention layers hand strided views of packed projections to the fused ops:

- message tokens across frames: ``xk.cross_frame_attn`` (also the MIT, which is
  the same attention over the T frame features of a video);
- patch tokens + their frame's message: ``xk.intra_frame_attn``;
- class-text queries over a video's patch features: ``xk.prompt_cross_attn``.
The causal text tower uses ``F.scaled_dot_product_attention``.

Drop path: drawn per sample (per frame for the frame-level residuals, per video
for the message residual). The official code applies timm's DropPath to
sequence-first ``[L, B*T, E]`` tensors, which draws the mask per *token
position* (shared by all frames of the batch): that drops single tokens'
residual branches rather than whole residual branches, which is not stochastic
depth as defined (Huang et al., 2016), and it rescales the kept tokens
differently from the dropped ones within one frame. We use the standard
per-sample form, as transformers' XCLIPDropPath also does.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

import xclip_kernels as xk
from xclip_kernels.nn import CrossFrameAttention, IntraFrameAttention, _check_backend

from .config import XCLIPConfig, arch_config

__all__ = ["XCLIP", "create_model", "QuickGELU", "drop_path", "cpu_supports_bf16", "text_length"]


# --- small layers -----------------------------------------------------------------


def _no_autograd(x: Tensor) -> bool:
    """True when autograd records nothing for ``x``: its buffer may then be overwritten in place."""
    return not (torch.is_grad_enabled() and x.requires_grad)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``. ``inplace=True`` (the MLPs, whose input is a fresh linear output) overwrites ``x``
    when autograd does not need it: the same three passes, bit for bit, without allocating two more activations."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        if self.inplace and _no_autograd(x):
            return x.mul_(torch.mul(x, 1.702).sigmoid_())
        return x * torch.sigmoid(1.702 * x)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


def _residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``; in inference the branch's fresh buffer takes the sum (same values, one allocation fewer)."""
    if _no_autograd(branch) and _no_autograd(x) and branch.shape == x.shape and branch.dtype == x.dtype \
            and branch.is_contiguous() and not torch.compiler.is_compiling():
        return branch.add_(x)
    return x + branch


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole residual branch of a sample (dim 0) with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _mlp(width: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            [("c_fc", nn.Linear(width, width * ratio)), ("gelu", QuickGELU(inplace=True)), ("c_proj", nn.Linear(width * ratio, width))]
        )
    )


class SelfAttention(nn.Module):
    """nn.MultiheadAttention-layout self-attention on ``[B, L, E]`` through SDPA (text tower, ablation)."""

    def __init__(self, embed_dim: int, num_heads: int, causal: bool = False) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.causal = embed_dim, num_heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, L, E = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(B, L, 3, self.num_heads, E // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, L, D]
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out_proj(o.transpose(1, 2).reshape(B, L, E))


class ResidualAttentionBlock(nn.Module):
    """CLIP's pre-LN block (text tower and MIT): ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``."""

    def __init__(self, width: int, attn: nn.Module, mlp_ratio: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.attn = attn
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, mlp_ratio)
        self.ln_2 = nn.LayerNorm(width, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = _residual(x, self.attn(self.ln_1(x)))
        return _residual(x, self.mlp(self.ln_2(x)))


class CrossFrameBlock(nn.Module):
    """The cross-frame communication block (official ``CrossFramelAttentionBlock``) on ``[B*T, L, E]``.

    ``msg = message_fc(cls)``; ``msg += message_attn(message_ln(msg))`` across the
    T frames; patch tokens (class token included) attend to their frame's tokens
    plus its message; MLP on the tokens only. ``cross_frame=False``: a plain
    CLIP ViT block (no messages).
    """

    def __init__(self, width: int, heads: int, drop_path: float = 0.0, mlp_ratio: int = 4, eps: float = 1e-5,
                 cross_frame: bool = True) -> None:
        super().__init__()
        self.cross_frame = cross_frame
        if cross_frame:
            self.message_fc = nn.Linear(width, width)
            self.message_ln = nn.LayerNorm(width, eps=eps)
            self.message_attn = CrossFrameAttention(width, heads)
            self.attn = IntraFrameAttention(width, heads)
        else:
            self.attn = SelfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=eps)
        self.mlp = _mlp(width, mlp_ratio)
        self.ln_2 = nn.LayerNorm(width, eps=eps)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        if self.cross_frame:
            Fr, L, E = x.shape
            msg = self.message_fc(x[:, 0]).view(Fr // num_frames, num_frames, E)
            msg = _residual(msg, self.drop_path(self.message_attn(self.message_ln(msg))))
            x = _residual(x, self.drop_path(self.attn(self.ln_1(x), self.ln_1(msg.view(Fr, 1, E)))))
        else:
            x = _residual(x, self.drop_path(self.attn(self.ln_1(x))))
        return _residual(x, self.drop_path(self.mlp(self.ln_2(x))))


class _Blocks(nn.Module):
    """``resblocks`` (official key) with optional activation checkpointing."""

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: Tensor, *args) -> Tensor:
        for blk in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled() and self.training:
                x = checkpoint(blk, x, *args, use_reentrant=False)
            else:
                x = blk(x, *args)
        return x


class CrossFrameVisionTransformer(nn.Module):
    """CLIP ViT with cross-frame communication blocks; returns (frame features, patch tokens)."""

    def __init__(self, cfg: XCLIPConfig) -> None:
        super().__init__()
        w, eps = cfg.vision_width, cfg.layer_norm_eps
        self.patch_size = cfg.vision_patch_size
        self.input_resolution = cfg.image_resolution
        self.conv1 = nn.Conv2d(3, w, kernel_size=self.patch_size, stride=self.patch_size, bias=False)
        scale = w**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.num_patches + 1, w))
        self.ln_pre = nn.LayerNorm(w, eps=eps)
        n = cfg.vision_layers
        dpr = [cfg.drop_path * i / (n - 1) if n > 1 else cfg.drop_path for i in range(n)]  # linear, as official
        self.transformer = _Blocks(
            CrossFrameBlock(w, cfg.vision_num_heads, dpr[i], cfg.mlp_ratio, eps, cfg.cross_frame) for i in range(n)
        )
        self.ln_post = nn.LayerNorm(w, eps=eps)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def forward(self, frames: Tensor, num_frames: int) -> tuple[Tensor, Tensor]:
        x = self.conv1(frames.to(self.conv1.weight.dtype))  # [F, W, g, g]
        x = x.flatten(2).transpose(1, 2)  # [F, N, W]
        cls = (self.class_embedding.to(x.dtype)).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.ln_pre(x)
        x = self.transformer(x, num_frames)
        cls_x = self.ln_post(x[:, 0]) @ self.proj
        return cls_x, x[:, 1:]


class MultiframeIntegrationTransformer(nn.Module):
    """MIT: ``mean_T(x + blocks(x + pos))`` over the frame features of each video."""

    def __init__(self, cfg: XCLIPConfig) -> None:
        super().__init__()
        E = cfg.embed_dim
        self.positional_embedding = nn.Parameter(torch.empty(1, cfg.num_frames, E))
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(E, CrossFrameAttention(E, cfg.mit_num_heads), cfg.mlp_ratio, cfg.layer_norm_eps)
            for _ in range(cfg.mit_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        ori = x
        x = x + self.positional_embedding.to(x.dtype)
        for blk in self.resblocks:
            x = blk(x)
        return (x + ori).mean(dim=1)


class PromptAttention(nn.Module):
    """Official ``MulitHeadAttention`` keys (q_proj, k_proj, v_proj without bias; proj with bias),
    computed with ``xk.prompt_cross_attn``. A 2-D query ``[K, E]`` is shared by all videos."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.backend: str | None = None

    def set_backend(self, backend: str | None) -> None:
        self.backend = _check_backend(backend)

    def forward(self, query: Tensor, visual: Tensor) -> Tensor:
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(query).unflatten(-1, (H, D))
        kv = F.linear(visual, torch.cat([self.k_proj.weight, self.v_proj.weight]))  # one matmul for k and v
        o = xk.prompt_cross_attn_packed(q, kv.unflatten(-1, (2, H, D)), backend=self.backend)  # one packed dkv
        return self.proj(o.flatten(-2))


class PromptGeneratorLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.cross_attn = PromptAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), QuickGELU(inplace=True), nn.Dropout(0.0),
                                 nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: Tensor, visual: Tensor) -> Tensor:
        x = x + self.cross_attn(self.norm1(x), visual)  # a shared [K, E] x broadcasts to [B, K, E]
        return _residual(x, self.mlp(self.norm3(x)))


class VideoSpecificPrompt(nn.Module):
    """The video-specific prompt generator; returns ``alpha * decoder(text, norm(visual))``."""

    def __init__(self, cfg: XCLIPConfig) -> None:
        super().__init__()
        E = cfg.embed_dim
        self.norm = nn.LayerNorm(E, eps=cfg.layer_norm_eps)
        self.decoder = nn.ModuleList(
            PromptGeneratorLayer(E, cfg.prompt_num_heads, cfg.mlp_ratio, cfg.layer_norm_eps)
            for _ in range(cfg.prompt_layers)
        )
        self.alpha = nn.Parameter(torch.full((E,), float(cfg.prompt_alpha)))

    def forward(self, text: Tensor, visual: Tensor) -> Tensor:
        visual = self.norm(visual)
        for layer in self.decoder:
            text = layer(text, visual)
        if text.dim() == 2:  # no decoder layers: still one row per video
            text = text.expand(visual.shape[0], *text.shape)
        return self.alpha * text


# --- the model --------------------------------------------------------------------------


class XCLIP(nn.Module):
    """X-CLIP: ``model(video [B, T, 3, H, W], tokens [K, L]) -> logits [B, K]``."""

    def __init__(self, config: XCLIPConfig | dict) -> None:
        super().__init__()
        cfg = XCLIPConfig.from_dict(config) if isinstance(config, dict) else config
        if not isinstance(cfg, XCLIPConfig):
            raise ValueError(f"XCLIP expects an XCLIPConfig or dict, got {type(config).__name__}")
        self.config = cfg
        E, tw = cfg.embed_dim, cfg.transformer_width
        # vision
        self.visual = CrossFrameVisionTransformer(cfg)
        self.prompts_visual_ln = nn.LayerNorm(cfg.vision_width, eps=cfg.layer_norm_eps)
        self.prompts_visual_proj = nn.Parameter(torch.randn(cfg.vision_width, E) * cfg.vision_width**-0.5)
        if cfg.cross_frame:
            self.mit = MultiframeIntegrationTransformer(cfg)
        self.prompts_generator = VideoSpecificPrompt(cfg)
        # text
        self.transformer = _Blocks(
            ResidualAttentionBlock(tw, SelfAttention(tw, cfg.transformer_heads, causal=True), cfg.mlp_ratio,
                                   cfg.layer_norm_eps)
            for _ in range(cfg.transformer_layers)
        )
        self.token_embedding = nn.Embedding(cfg.vocab_size, tw)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, tw))
        self.ln_final = nn.LayerNorm(tw, eps=cfg.layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(tw, E))
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))
        self._text_cache: tuple | None = None
        self.reset_parameters()
        if cfg.freeze_text:
            self.freeze_text_encoder()

    # --- initialisation ---------------------------------------------------------------
    def reset_parameters(self) -> None:
        """CLIP's initialisation for the two towers, truncated normal(0.02) for X-CLIP's new modules."""
        cfg = self.config
        tw, L = cfg.transformer_width, cfg.transformer_layers
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        for blocks, width, nl in ((self.transformer, tw, L), (self.visual.transformer, cfg.vision_width, cfg.vision_layers)):
            attn_std, proj_std, fc_std = width**-0.5, width**-0.5 * (2 * nl) ** -0.5, (2 * width) ** -0.5
            for blk in blocks.resblocks:
                nn.init.normal_(blk.attn.in_proj_weight, std=attn_std)
                nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
                nn.init.normal_(blk.mlp.c_fc.weight, std=fc_std)
                nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)
                if getattr(blk, "cross_frame", False):
                    for m in (blk.message_fc, blk.message_attn.out_proj):
                        nn.init.trunc_normal_(m.weight, std=0.02)
                        nn.init.zeros_(m.bias)
                    nn.init.trunc_normal_(blk.message_attn.in_proj_weight, std=0.02)
        nn.init.normal_(self.text_projection, std=tw**-0.5)
        new = [self.prompts_generator] + ([self.mit] if cfg.cross_frame else [])
        for mod in new:
            for m in mod.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, CrossFrameAttention):
                    nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
                    nn.init.zeros_(m.in_proj_bias)

    # --- options ----------------------------------------------------------------------
    def set_attn_backend(self, name: str | None = None) -> "XCLIP":
        """Backend of the three fused ops for every attention layer (None / 'auto': automatic)."""
        name = _check_backend(name)
        for m in self.modules():
            if hasattr(m, "set_backend") and m is not self:
                m.set_backend(name)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> "XCLIP":
        """Recompute each vision and text block's activations in the backward pass."""
        self.visual.transformer.grad_checkpointing = bool(enable)
        self.transformer.grad_checkpointing = bool(enable)
        return self

    def text_parameters(self) -> list[nn.Parameter]:
        return [*self.transformer.parameters(), self.token_embedding.weight, self.positional_embedding,
                *self.ln_final.parameters(), self.text_projection]

    def freeze_text_encoder(self, freeze: bool = True) -> "XCLIP":
        """Freeze the text tower; its features are then cached per token set (recomputed if weights change)."""
        self.config.freeze_text = bool(freeze)
        for p in self.text_parameters():
            p.requires_grad_(not freeze)
        self._text_cache = None
        return self

    # --- encoders ---------------------------------------------------------------------
    def _check_video(self, video) -> tuple[int, int]:
        cfg = self.config
        if not isinstance(video, Tensor):
            raise ValueError(f"video must be a Tensor [B, T, 3, H, W], got {type(video).__name__}")
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        if not video.is_floating_point():
            raise ValueError(f"video must be a float tensor (normalised pixels), got dtype {video.dtype}")
        H, W = video.shape[-2:]
        if H != cfg.image_resolution or W != cfg.image_resolution:
            raise ValueError(
                f"video frames are {H}x{W}, expected {cfg.image_resolution}x{cfg.image_resolution} "
                f"(the model's image_resolution); shape {tuple(video.shape)}"
            )
        B, T = video.shape[:2]
        if B == 0 or T == 0:
            raise ValueError(f"video must have B >= 1 and T >= 1, got shape {tuple(video.shape)}")
        if cfg.cross_frame and T != cfg.num_frames:
            raise ValueError(
                f"video has T={T} frames, expected num_frames={cfg.num_frames} (the MIT positional embedding is per "
                f"frame; load the model with num_frames={T} to interpolate it)"
            )
        return B, T

    def encode_video(self, video: Tensor) -> tuple[Tensor, Tensor]:
        """``video [B, T, 3, H, W] -> (video_emb [B, E], patch_emb [B, T, N, E])``.

        ``patch_emb`` is the patch tokens after ``prompts_visual_ln`` and
        ``prompts_visual_proj`` (the prompt generator's input before the mean over T).
        """
        B, T = self._check_video(video)
        cls, patches = self.visual(video.flatten(0, 1), T)
        patches = self.prompts_visual_ln(patches) @ self.prompts_visual_proj
        cls = cls.view(B, T, -1)
        video_emb = self.mit(cls) if self.config.cross_frame else cls.mean(dim=1)
        return video_emb, patches.view(B, T, patches.shape[1], -1)

    def _check_tokens(self, tokens) -> None:
        if not isinstance(tokens, Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            got = f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor [K, L] (from xclip.tokenize), got {got}")
        K, L = tokens.shape
        if K == 0 or L == 0 or L > self.config.context_length:
            raise ValueError(
                f"tokens must be [K, L] with K >= 1 and 1 <= L <= context_length={self.config.context_length}, "
                f"got shape {tuple(tokens.shape)}"
            )
        if not torch.compiler.is_compiling() and tokens.device.type != "meta":
            lo, hi = (int(x) for x in torch.aminmax(tokens))  # one sync; an embedding lookup past the end
            V = self.config.vocab_size  # would fail later as "index out of range in self"
            if lo < 0 or hi >= V:
                src = getattr(self, "checkpoint_path", None)
                raise ValueError(
                    f"token id {hi if hi >= V else lo} is outside the text vocabulary of {V} ids (token_embedding "
                    f"rows) of this model{' loaded from ' + src if src else ''}; the largest id in these tokens is "
                    f"{hi} (the CLIP tokenizer produces ids up to 49407): use a checkpoint with the full CLIP "
                    f"vocabulary, or tokens from a tokenizer that fits it"
                )

    def _encode_text(self, tokens: Tensor) -> Tensor:
        eot = tokens.argmax(dim=-1)  # <eot> has the largest id
        if not torch.compiler.is_compiling():  # a data-dependent length would break the graph
            # The tower is causal: the feature at <eot> never sees the positions after it, so the padding
            # beyond the batch's last <eot> can be dropped. The linear layers and LayerNorms give the same
            # bits; SDPA's CPU kernel may sum a row in another order for another key length (float64: ~1e-15).
            tokens = tokens[:, : text_length(tokens, eot)]
        L = tokens.shape[1]
        x = self.token_embedding(tokens) + self.positional_embedding[:L]
        x = self.transformer(x)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def _text_version(self) -> tuple:
        return tuple(p._version for p in self.text_parameters())

    def encode_text(self, tokens: Tensor) -> Tensor:
        """``tokens [K, L] -> [K, E]`` (features at <eot>, projected). Cached when the text tower is frozen.

        Only the first :func:`text_length` positions are encoded (the padding after the batch's
        longest text is dropped); the tower is causal, so the result is the same.
        """
        self._check_tokens(tokens)
        frozen = self.config.freeze_text and not torch.compiler.is_compiling()
        if not frozen:
            return self._encode_text(tokens)
        key = (tokens.device, self.text_projection.dtype, self._text_version())
        c = self._text_cache
        if c is not None and c[0] == key and c[1].shape == tokens.shape and torch.equal(c[1], tokens):
            return c[2]
        with torch.no_grad():
            feats = self._encode_text(tokens)
        self._text_cache = (key, tokens.clone(), feats)
        return feats

    # --- heads ------------------------------------------------------------------------
    def logits_from_features(self, video_emb: Tensor, patch_emb: Tensor, text_emb: Tensor) -> Tensor:
        """Prompt generator + cosine similarity * ``logit_scale.exp()``: ``[B, E], [B, T, N, E], [K, E] -> [B, K]``."""
        if video_emb.dim() != 2 or patch_emb.dim() != 4 or text_emb.dim() != 2:
            raise ValueError(
                "logits_from_features expects video_emb [B, E], patch_emb [B, T, N, E], text_emb [K, E]; got shapes "
                f"{tuple(video_emb.shape)}, {tuple(patch_emb.shape)}, {tuple(text_emb.shape)}"
            )
        E = self.config.embed_dim
        if video_emb.shape[-1] != E or patch_emb.shape[-1] != E or text_emb.shape[-1] != E or \
                patch_emb.shape[0] != video_emb.shape[0]:
            raise ValueError(
                f"logits_from_features: inconsistent shapes video_emb {tuple(video_emb.shape)}, patch_emb "
                f"{tuple(patch_emb.shape)}, text_emb {tuple(text_emb.shape)} (embed_dim={E})"
            )
        visual = patch_emb.mean(dim=1)  # [B, N, E]
        text = text_emb.to(visual.dtype)
        text = text + self.prompts_generator(text, visual)  # [B, K, E]; the shared text is never expanded
        video = F.normalize(video_emb, dim=-1)
        text = F.normalize(text, dim=-1)
        return torch.einsum("bd,bkd->bk", video, self.logit_scale.exp() * text)

    def forward(self, video: Tensor, tokens: Tensor) -> Tensor:
        video_emb, patch_emb = self.encode_video(video)
        return self.logits_from_features(video_emb, patch_emb, self.encode_text(tokens))

    # --- checkpoints -------------------------------------------------------------------
    def save_pretrained(self, directory, safe_serialization: bool = True) -> None:
        """Write a Hugging Face X-CLIP directory (config.json + model.safetensors)."""
        from .hf import save_pretrained

        save_pretrained(self, directory, safe_serialization=safe_serialization)

    def extra_repr(self) -> str:
        c = self.config
        return (f"arch={c.arch}, frames={c.num_frames}, vision={c.vision_layers}x{c.vision_width}/p{c.vision_patch_size}"
                f"@{c.image_resolution}, text={c.transformer_layers}x{c.transformer_width}, embed_dim={c.embed_dim}, "
                f"cross_frame={c.cross_frame}")


def text_length(tokens: Tensor, eot: Tensor | None = None) -> int:
    """Positions of ``tokens [K, L]`` the text tower needs: up to and including the last row's <eot>.

    <eot> is located as the model reads it, the (first) largest id of each row (CLIP's 49407, and any
    tokenizer whose end token is its largest id), so the trimmed batch yields the same features.
    """
    if eot is None:
        eot = tokens.argmax(dim=-1)
    return int(eot.max()) + 1 if eot.numel() else tokens.shape[-1]


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX-BF16), so a bf16 model is fast.

    Without it PyTorch still runs bfloat16 on the CPU, emulated and usually slower than float32.
    """
    return _cpu_bf16()


@functools.lru_cache(maxsize=1)
def _cpu_bf16() -> bool:
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
    except (AttributeError, RuntimeError):
        pass  # no such probe in this torch: the CPU flags decide
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:  # not Linux: trust oneDNN's own check
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def create_model(arch_or_config: str | XCLIPConfig | dict = "ViT-B/16", num_frames: int | None = 8,
                 **overrides) -> XCLIP:
    """A randomly initialised X-CLIP.

    ``arch_or_config``: "ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336", or an
    :class:`XCLIPConfig` / dict; ``overrides`` replace config fields. ``num_frames=None``
    keeps the given config's value.
    """
    if num_frames is not None:
        overrides["num_frames"] = num_frames
    if isinstance(arch_or_config, str):
        cfg = arch_config(arch_or_config, **overrides)
    elif isinstance(arch_or_config, (XCLIPConfig, dict)):
        cfg = XCLIPConfig.from_dict(arch_or_config).replace(**overrides)
    else:
        raise ValueError(
            f"create_model: arch_or_config must be an arch name, XCLIPConfig or dict, got {type(arch_or_config).__name__}"
        )
    return XCLIP(cfg)


def interpolate_frames(pos: Tensor, num_frames: int) -> Tensor:
    """Linearly interpolate a per-frame embedding ``[1, T, E]`` to ``[1, num_frames, E]``."""
    if pos.shape[1] == num_frames:
        return pos
    warnings.warn(
        f"MIT positional embedding interpolated from {pos.shape[1]} to {num_frames} frames (linear)", stacklevel=3
    )
    out = F.interpolate(pos.detach().float().transpose(1, 2), size=num_frames, mode="linear", align_corners=True)
    return out.transpose(1, 2).to(pos.dtype).contiguous()
