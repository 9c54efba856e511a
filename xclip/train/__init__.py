"""Training: configs, AdamW groups, cosine schedule, mixup/cutmix, checkpoints, DDP loop.

``xclip train CONFIG [key=value ...]`` (see :mod:`xclip.train.cli`); from
Python, ``xclip.train.train(load_config(path, overrides))``.
"""

from .config import DEFAULTS, load_config
from .mixup import MixupCutmix, smooth_one_hot, soft_target_cross_entropy
from .optim import build_optimizer, freeze_text, param_groups
from .schedule import CosineWarmupSchedule


def train(cfg, **kwargs):
    from .trainer import train as _train

    return _train(cfg, **kwargs)


__all__ = ["DEFAULTS", "load_config", "train", "build_optimizer", "param_groups", "freeze_text",
           "CosineWarmupSchedule", "MixupCutmix", "smooth_one_hot", "soft_target_cross_entropy"]
