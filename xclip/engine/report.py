"""Evaluation outputs: metrics JSON, per-class CSV table, confusion-matrix PNG."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from .metrics import confusion_matrix, per_class_accuracy, plot_confusion_matrix, write_per_class_table

__all__ = ["write_eval_outputs", "json_safe"]


def json_safe(obj: Any) -> Any:
    """Drop tensors, turn NaN into None, recurse into dicts/lists."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_eval_outputs(result: dict[str, Any], out_dir, class_names: Sequence[str], *, name: str = "eval",
                       extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Write ``{name}_metrics.json``, ``{name}_per_class.csv``, ``{name}_confusion.png`` into ``out_dir``.

    Returns the paths written. The JSON holds the scalar metrics, the skipped
    files, per-class accuracy and ``extra``.
    """
    os.makedirs(out_dir, exist_ok=True)
    k = len(class_names)
    paths = {"metrics": os.path.join(out_dir, f"{name}_metrics.json"),
             "per_class": os.path.join(out_dir, f"{name}_per_class.csv"),
             "confusion": os.path.join(out_dir, f"{name}_confusion.png")}
    if result["num_samples"]:
        preds = result["probs"].argmax(1)
        cm = confusion_matrix(preds, result["labels"], k)
        pca = per_class_accuracy(preds, result["labels"], k)
    else:
        cm = torch.zeros(k, k, dtype=torch.long)
        pca = torch.full((k,), float("nan"))
    metrics = json_safe({key: v for key, v in result.items() if key not in ("probs", "labels", "indices")})
    metrics["per_class_accuracy"] = {class_names[i]: (None if math.isnan(float(a)) else round(float(a), 4))
                                     for i, a in enumerate(pca)}
    if extra:
        metrics.update(json_safe(extra))
    with open(paths["metrics"], "w", encoding="utf-8") as f:
        json.dump(metrics, f, indent=2)
    write_per_class_table(paths["per_class"], cm, class_names)
    plot_confusion_matrix(cm, class_names, paths["confusion"], title=f"{name}: top-1 {result['top1']:.2f}%")
    return paths
