"""The engine: training and evaluation on top of the model and data layers.

Training
* :class:`Trainer` / :func:`train(cfg)` (:mod:`xclip.engine.trainer`): the loop, in parts.
* :func:`build_optimizer`, :func:`param_groups`, :func:`freeze_text` (:mod:`.optim`);
  :class:`CosineWarmupSchedule` (:mod:`.schedule`); :class:`MixupCutmix` (:mod:`.mixup`);
  atomic checkpoints and ``resume=auto`` discovery (:mod:`.checkpoint`).

Evaluation
* :func:`evaluate(model, loader, text_tokens_or_features, *, device, amp_dtype,
  num_classes, desc) -> dict`, :func:`fuse_views`, :func:`gather_results` (:mod:`.evaluate`).
* metrics (:mod:`.metrics`): ``accuracy_topk``, ``mean_class_accuracy``,
  ``confusion_matrix``, ``per_class_accuracy``, ``plot_confusion_matrix``.
* zero-shot splits (:mod:`.zeroshot`), k-shot lists (:mod:`.fewshot`),
  report files (:mod:`.report`).
"""

from .evaluate import evaluate, fuse_views, gather_results
from .fewshot import make_kshot_list, write_kshot_lists
from .metrics import (accuracy_topk, confusion_matrix, mean_class_accuracy, per_class_accuracy,
                      plot_confusion_matrix)
from .mixup import MixupCutmix, smooth_one_hot, soft_target_cross_entropy
from .optim import build_optimizer, freeze_text, param_groups
from .report import write_eval_outputs
from .schedule import CosineWarmupSchedule
from .trainer import NonFiniteLossError, Trainer, train
from .zeroshot import hmdb_ucf_splits, k600_novel_splits, summarise_splits

__all__ = ["Trainer", "train", "NonFiniteLossError", "build_optimizer", "param_groups", "freeze_text",
           "CosineWarmupSchedule", "MixupCutmix", "smooth_one_hot", "soft_target_cross_entropy",
           "evaluate", "fuse_views", "gather_results", "make_kshot_list", "write_kshot_lists", "accuracy_topk",
           "confusion_matrix", "mean_class_accuracy", "per_class_accuracy", "plot_confusion_matrix",
           "write_eval_outputs", "hmdb_ucf_splits", "k600_novel_splits", "summarise_splits"]
