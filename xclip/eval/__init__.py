"""Deprecated: evaluation moved to :mod:`xclip.engine` (``evaluate``, metrics, zero-/few-shot,
reports) and the ``xclip eval`` / ``xclip predict`` commands to :mod:`xclip.apps`.

The old names and submodules (``xclip.eval.metrics``, ``.zeroshot``, ``.cli``,
``.predict``, ...) still work, with a ``DeprecationWarning``.
"""

from xclip._compat import alias_package

alias_package("xclip.eval", "xclip.engine", {
    "evaluate": "xclip.engine.evaluate", "fewshot": "xclip.engine.fewshot", "metrics": "xclip.engine.metrics",
    "report": "xclip.engine.report", "zeroshot": "xclip.engine.zeroshot", "cli": "xclip.apps.eval",
    "predict": "xclip.apps.predict",
})

from xclip.engine import (accuracy_topk, confusion_matrix, evaluate, fuse_views, gather_results,  # noqa: E402
                          hmdb_ucf_splits, k600_novel_splits, make_kshot_list, mean_class_accuracy,
                          per_class_accuracy, plot_confusion_matrix, summarise_splits, write_eval_outputs,
                          write_kshot_lists)

__all__ = ["evaluate", "fuse_views", "gather_results", "make_kshot_list", "write_kshot_lists", "accuracy_topk",
           "confusion_matrix", "mean_class_accuracy", "per_class_accuracy", "plot_confusion_matrix",
           "write_eval_outputs", "hmdb_ucf_splits", "k600_novel_splits", "summarise_splits"]
