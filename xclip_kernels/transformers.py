"""Run the fused ops inside transformers' own video models, in place.

``apply_to(model)`` takes a loaded ``transformers`` model and reroutes its
attentions through :mod:`xclip_kernels` (Liger-Kernel style: the weights,
module tree and state dict stay as they are; only the ``forward`` of the
right module *instances* is replaced, so other models in the process are not
touched)::

    from transformers import XCLIPModel
    from xclip_kernels.transformers import apply_to

    model = apply_to(XCLIPModel.from_pretrained("microsoft/xclip-base-patch32"))

Supported models:

* ``XCLIPModel`` (and the ``XCLIPVisionModel`` inside it), four attentions:
  - the cross-frame message attention of every vision block
    (``message_attn``: the T message tokens of a video attend to each other)
    -> :func:`xclip_kernels.cross_frame_attn`;
  - the intra-frame attention of every vision block, where transformers
    concatenates the message token to the frame's tokens, runs attention
    over N + 1 tokens and drops the last row; patched, the N patch queries
    attend to their N keys plus the message key and value given separately
    -> :func:`xclip_kernels.intra_frame_attn` (no concatenation, no query
    for the message row);
  - the multi-frame integration transformer's (MIT) attention over the T
    frame features -> :func:`xclip_kernels.cross_frame_attn`;
  - the prompt generator's cross-attention (class texts attend to a
    video's visual tokens) -> :func:`xclip_kernels.prompt_cross_attn`.
  The text tower (causal, masked) keeps transformers' attention.
* ``TimesformerModel`` / ``TimesformerForVideoClassification`` with
  ``attention_type="divided_space_time"``: the temporal attention, where
  each patch attends across the T frames -> :func:`xclip_kernels.cross_frame_attn`.

A patched module falls back to transformers' own forward for a call it
cannot express exactly: attention dropout active in training, an attention
mask, or ``output_attentions``. Applying twice is a no-op; :func:`remove_from`
restores the original forwards. Any other model raises ``ValueError`` naming
the supported ones.
"""

from __future__ import annotations

import copy
import types
from typing import Any

from torch import nn

__all__ = ["apply_to", "remove_from", "patched_copy", "patched_modules", "SUPPORTED_MODELS"]

SUPPORTED_MODELS = ("XCLIPModel", "XCLIPVisionModel", "TimesformerModel", "TimesformerForVideoClassification")

_ORIG = "_xk_original_forward"


# --- patched forwards -------------------------------------------------------------


def _wants_weights(kwargs: dict) -> bool:
    return bool(kwargs.get("output_attentions"))


def _xclip_attention_forward(self, hidden_states, attention_mask=None, **kwargs):
    """XCLIPAttention over [B, T, C] with every token attending to every token (message / MIT attention)."""
    if attention_mask is not None or (self.training and self.dropout > 0) or _wants_weights(kwargs):
        return getattr(self, _ORIG)(hidden_states, attention_mask, **kwargs)
    import xclip_kernels as xk

    b, t, c = hidden_states.shape
    shape = (b, t, self.num_heads, self.head_dim)
    q = self.q_proj(hidden_states).view(shape)
    k = self.k_proj(hidden_states).view(shape)
    v = self.v_proj(hidden_states).view(shape)
    o = xk.cross_frame_attn(q, k, v, scale=self.scale)
    return self.out_proj(o.reshape(b, t, c)), None


def _xclip_vision_layer_forward(self, hidden_states, attention_mask=None, **kwargs):
    """XCLIPVisionEncoderLayer (CrossFramelAttentionBlock) without concatenating the message token."""
    attn = self.self_attn
    if attention_mask is not None or (attn.training and attn.dropout > 0) or _wants_weights(kwargs):
        return getattr(self, _ORIG)(hidden_states, attention_mask, **kwargs)
    import xclip_kernels as xk

    frames, n, c = hidden_states.shape
    batch = frames // self.num_frames
    msg = self.message_fc(hidden_states[:, 0, :]).view(batch, self.num_frames, c)
    msg = msg + self.drop_path(self.message_attn(self.message_ln(msg), **kwargs)[0])
    msg = msg.view(frames, 1, c)

    # layer_norm1 is per token, so normalising the frame tokens and the message
    # apart equals normalising their concatenation.
    x = self.layer_norm1(hidden_states)
    m = self.layer_norm1(msg)
    h, d = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(frames, n, h, d)
    k = attn.k_proj(x).view(frames, n, h, d)
    v = attn.v_proj(x).view(frames, n, h, d)
    k_msg = attn.k_proj(m).view(frames, 1, h, d)
    v_msg = attn.v_proj(m).view(frames, 1, h, d)
    o = xk.intra_frame_attn(q, k, v, k_msg, v_msg, scale=attn.scale)
    # transformers adds the attention output to the concatenated residual and
    # then keeps the first n rows: the message row never reaches the output.
    hidden_states = hidden_states + attn.out_proj(o.reshape(frames, n, c))

    residual = hidden_states
    hidden_states = self.mlp(self.layer_norm2(hidden_states))
    return residual + hidden_states


def _xclip_cross_attention_forward(self, queries, keys, values, **kwargs):
    """XCLIPCrossAttention (prompt generator): class texts [B, K, C] attend to visual tokens [B, N, C]."""
    if (self.training and self.attn_drop > 0) or _wants_weights(kwargs):
        return getattr(self, _ORIG)(queries, keys, values, **kwargs)
    import xclip_kernels as xk

    b, kq, _ = queries.shape
    nk = keys.shape[1]
    q = self.q_proj(queries).view(b, kq, -1, self.head_dim)
    k = self.k_proj(keys).view(b, nk, -1, self.head_dim)
    v = self.v_proj(values).view(b, nk, -1, self.head_dim)
    o = xk.prompt_cross_attn(q, k, v, scale=self.scale)
    return self.proj_drop(self.proj(o.reshape(b, kq, -1)))


def _timesformer_temporal_forward(self, hidden_states, output_attentions: bool = False):
    """TimesformerSelfAttention used as temporal attention: [B * patches, T, C], each patch across T frames."""
    if output_attentions or (self.training and self.attn_drop.p > 0):
        return getattr(self, _ORIG)(hidden_states, output_attentions)
    import xclip_kernels as xk

    bp, t, c = hidden_states.shape
    q, k, v = self.qkv(hidden_states).view(bp, t, 3, self.num_heads, c // self.num_heads).unbind(2)
    o = xk.cross_frame_attn(q, k, v, scale=self.scale)  # strided views into the packed projection: no copies
    return (o.reshape(bp, t, c),)


# --- patching ---------------------------------------------------------------------


def _patch(module: nn.Module, fn) -> int:
    if hasattr(module, _ORIG):  # already patched
        return 0
    object.__setattr__(module, _ORIG, module.forward)
    module.forward = types.MethodType(fn, module)
    return 1


def _unpatch(module: nn.Module) -> int:
    if not hasattr(module, _ORIG):
        return 0
    object.__delattr__(module, _ORIG)
    if "forward" in module.__dict__:
        del module.__dict__["forward"]
    return 1


def _classes() -> dict[str, Any]:
    try:
        from transformers.models.timesformer import modeling_timesformer as ts
        from transformers.models.x_clip import modeling_x_clip as xc
    except Exception:  # transformers missing or too old: nothing is supported
        return {}
    return {"xc": xc, "ts": ts}


def _targets(model: nn.Module) -> list[tuple[nn.Module, Any]]:
    """(module, patched forward) pairs for a supported model; ValueError otherwise."""
    mods = _classes()
    if not mods:
        raise ValueError(f"xclip_kernels.transformers.apply_to supports transformers' {', '.join(SUPPORTED_MODELS)} "
                         f"(transformers is not installed or lacks them); got {type(model).__name__}")
    xc, ts = mods["xc"], mods["ts"]
    out: list[tuple[nn.Module, Any]] = []
    if isinstance(model, (xc.XCLIPModel, xc.XCLIPVisionModel)):
        for m in model.modules():
            if isinstance(m, xc.XCLIPVisionEncoderLayer):
                out.append((m, _xclip_vision_layer_forward))
                out.append((m.message_attn, _xclip_attention_forward))
            elif isinstance(m, xc.XCLIPMultiframeIntegrationTransformer):
                out.extend((layer.self_attn, _xclip_attention_forward) for layer in m.encoder.layers)
            elif isinstance(m, xc.XCLIPCrossAttention):
                out.append((m, _xclip_cross_attention_forward))
        return out
    if isinstance(model, (ts.TimesformerModel, ts.TimesformerForVideoClassification)):
        cfg = model.config
        if cfg.attention_type != "divided_space_time":
            raise ValueError(f"apply_to(TimesformerModel): only attention_type='divided_space_time' has a temporal "
                             f"attention to patch, got attention_type={cfg.attention_type!r}")
        for m in model.modules():
            if isinstance(m, ts.TimesformerLayer):
                out.append((m.temporal_attention.attention, _timesformer_temporal_forward))
        return out
    raise ValueError(f"xclip_kernels.transformers.apply_to supports transformers' {', '.join(SUPPORTED_MODELS)}; "
                     f"got {type(model).__module__}.{type(model).__name__}")


def apply_to(model: nn.Module) -> nn.Module:
    """Patch a loaded transformers ``XCLIPModel`` / ``TimesformerModel`` in place; returns ``model``."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"apply_to expects a transformers model ({', '.join(SUPPORTED_MODELS)}), "
                         f"got {type(model).__name__}")
    for module, fn in _targets(model):
        _patch(module, fn)
    return model


def remove_from(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_to` (restores transformers' forwards); returns ``model``."""
    for module in model.modules():
        _unpatch(module)
    return model


def patched_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose forward currently goes through xclip_kernels."""
    return [name for name, m in model.named_modules() if hasattr(m, _ORIG)]


def patched_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` (same weights, separate tensors) with :func:`apply_to` applied.

    For side-by-side runs such as ``xclip bench``'s "transformers patched against transformers".
    """
    remove_from(clone := copy.deepcopy(model))
    return apply_to(clone)
