"""AdamW with the X-CLIP parameter groups.

Four kinds of parameter: CLIP parts at the base learning rate and the new
video modules (cross-frame ``message_*``, the multi-frame integration
transformer ``mit.``, the video-specific prompt generator ``prompts_``) at
``new_module_lr_mult`` times it; each split again into decayed matrices and
undecayed 1-D parameters, biases and positional / class embeddings.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from xclip.config import RunConfig, TrainConfig

__all__ = ["NEW_MODULE_KEYWORDS", "NO_DECAY_KEYWORDS", "TEXT_PREFIXES", "is_new_module", "is_no_decay", "is_text", "param_groups", "build_optimizer", "freeze_text"]

NEW_MODULE_KEYWORDS = ("message_", "mit.", "prompts_")
# Embeddings that take no weight decay even though they are not 1-D.
NO_DECAY_KEYWORDS = ("positional_embedding", "class_embedding", "logit_scale")
# Parameters the official FIX_TEXT leaves trainable: the video side.
VIDEO_SIDE_KEYWORDS = ("visual.", "mit.", "prompts_", "message_")


def is_new_module(name: str) -> bool:
    return any(k in name for k in NEW_MODULE_KEYWORDS) or name.startswith("mit") or name.startswith("prompts")


# The text tower of the model (top-level names; the vision tower's live under "visual.").
TEXT_PREFIXES = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")


def is_text(name: str) -> bool:
    return name.startswith(TEXT_PREFIXES)


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    return param.ndim <= 1 or name.endswith(".bias") or any(k in name for k in NO_DECAY_KEYWORDS)


def freeze_text(model: nn.Module) -> list[str]:
    """Freeze everything except the video side (official FIX_TEXT); returns the frozen names."""
    frozen = []
    for name, p in model.named_parameters():
        if not any(k in name for k in VIDEO_SIDE_KEYWORDS) and not name.startswith(("mit", "prompts")):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def param_groups(
    named_params: Iterable[tuple[str, torch.Tensor]],
    *,
    lr: float,
    weight_decay: float,
    new_module_lr_mult: float = 10.0,
    text_lr_mult: float = 1.0,
    split_text: bool = False,
) -> list[dict]:
    """Split trainable parameters into up to four AdamW groups (six with ``text_lr_mult != 1`` or ``split_text``).

    Each group carries ``name``, ``lr`` and ``base_lr`` (what the schedule
    scales), ``weight_decay`` and ``param_names`` (for logging and tests).
    Frozen parameters (``requires_grad=False``) are left out. With
    ``text_lr_mult != 1`` (or ``split_text=True``) the text tower gets its own
    groups (``text_*``) at ``lr * text_lr_mult``.
    """
    if lr < 0 or weight_decay < 0 or new_module_lr_mult < 0 or text_lr_mult < 0:
        raise ValueError(f"lr, weight_decay, new_module_lr_mult and text_lr_mult must be >= 0, got {lr}, "
                         f"{weight_decay}, {new_module_lr_mult}, {text_lr_mult}")
    split_text = bool(split_text) or text_lr_mult != 1.0
    buckets: dict[tuple[str, bool], tuple[list, list]] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        kind = "new" if is_new_module(name) else ("text" if split_text and is_text(name) else "clip")
        key = (kind, is_no_decay(name, p))
        buckets.setdefault(key, ([], []))
        buckets[key][0].append(p)
        buckets[key][1].append(name)
    groups = []
    mult = {"clip": 1.0, "new": new_module_lr_mult, "text": text_lr_mult}
    for kind in ("clip", "new", "text"):
        for no_decay in (False, True):
            if (kind, no_decay) not in buckets:
                continue
            params, names = buckets[(kind, no_decay)]
            group_lr = lr * mult[kind]
            groups.append({
                "params": params,
                "param_names": names,
                "name": f"{kind}_{'no_decay' if no_decay else 'decay'}",
                "lr": group_lr,
                "base_lr": group_lr,
                "weight_decay": 0.0 if no_decay else weight_decay,
            })
    if not groups:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return groups


def build_optimizer(model: nn.Module, train_cfg: "TrainConfig | Mapping") -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` as ``train_cfg`` (a :class:`xclip.config.TrainConfig`, or a dict of its keys) says."""
    t = train_cfg if isinstance(train_cfg, TrainConfig) else RunConfig.from_dict({"train": dict(train_cfg)}).train
    groups = param_groups(
        model.named_parameters(),
        lr=t.lr,
        weight_decay=t.weight_decay,
        new_module_lr_mult=t.new_module_lr_mult,
        text_lr_mult=t.text_lr_mult,
        split_text=t.text_freeze_epochs > 0,  # the schedule holds the text_* groups at 0
    )
    kwargs = dict(lr=t.lr, betas=tuple(t.betas), eps=t.eps)
    fused = t.fused_optimizer
    params = [p for g in groups for p in g["params"]]
    can_fuse = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    if fused is True or (fused == "auto" and can_fuse):
        try:  # one kernel per step instead of a dozen per tensor; same update rule
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            if fused is True:
                raise
    return torch.optim.AdamW(groups, **kwargs)
