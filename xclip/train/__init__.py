"""Deprecated: training moved to :mod:`xclip.engine` (loop, optimiser, schedule, mixup,
checkpoints), :mod:`xclip.config` (the run config) and :mod:`xclip.runtime` (process group).

``xclip.train.train(cfg)``, ``xclip.train.load_config`` and the old submodules
(``xclip.train.trainer``, ``.config``, ``.checkpoint``, ...) still work, with a
``DeprecationWarning``.
"""

from xclip._compat import alias_package

alias_package("xclip.train", "xclip.engine / xclip.config", {
    "config": "xclip.config", "distributed": "xclip.runtime", "frame_cache": "xclip.data.frame_cache",
    "checkpoint": "xclip.engine.checkpoint", "optim": "xclip.engine.optim", "schedule": "xclip.engine.schedule",
    "mixup": "xclip.engine.mixup", "trainer": "xclip.engine.trainer", "cli": "xclip.apps.train",
})

from xclip.config import DEFAULTS, load_config  # noqa: E402
from xclip.engine import (CosineWarmupSchedule, MixupCutmix, build_optimizer, freeze_text,  # noqa: E402
                          param_groups, smooth_one_hot, soft_target_cross_entropy, train)

__all__ = ["DEFAULTS", "load_config", "train", "build_optimizer", "param_groups", "freeze_text",
           "CosineWarmupSchedule", "MixupCutmix", "smooth_one_hot", "soft_target_cross_entropy"]
