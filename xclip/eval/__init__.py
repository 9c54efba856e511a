"""Evaluation: metrics, multi-view fusion, distributed evaluation, zero-/few-shot protocols.

* :mod:`xclip.eval.metrics`: ``accuracy_topk``, ``mean_class_accuracy``,
  ``confusion_matrix``, ``per_class_accuracy``, ``plot_confusion_matrix``.
* :func:`evaluate(model, loader, text_tokens_or_features, *, device, amp_dtype,
  num_classes, desc) -> dict` (:mod:`xclip.eval.evaluate`).
* :mod:`xclip.eval.zeroshot`: HMDB-51 / UCF-101 split readers,
  ``k600_novel_splits``, ``summarise_splits``.
* :mod:`xclip.eval.fewshot`: ``make_kshot_list``, ``write_kshot_lists``.
* :mod:`xclip.eval.report`: metrics JSON, per-class CSV, confusion PNG.
* ``xclip eval`` (:mod:`xclip.eval.cli`) and ``xclip predict`` (:mod:`xclip.eval.predict`).
"""

from .evaluate import evaluate, fuse_views, gather_results
from .fewshot import make_kshot_list, write_kshot_lists
from .metrics import (accuracy_topk, confusion_matrix, mean_class_accuracy, per_class_accuracy,
                      plot_confusion_matrix)
from .report import write_eval_outputs
from .zeroshot import hmdb_ucf_splits, k600_novel_splits, summarise_splits

__all__ = ["evaluate", "fuse_views", "gather_results", "make_kshot_list", "write_kshot_lists", "accuracy_topk",
           "confusion_matrix", "mean_class_accuracy", "per_class_accuracy", "plot_confusion_matrix",
           "write_eval_outputs", "hmdb_ucf_splits", "k600_novel_splits", "summarise_splits"]
