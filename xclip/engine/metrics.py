"""Classification metrics on score matrices (logits or probabilities) ``[N, K]``.

* :func:`accuracy_topk(scores, labels, ks=(1, 5))` -> list of percentages, one
  per ``k`` (``k`` larger than ``K`` counts as ``K``). Ties are broken by
  ``torch.topk``'s order.
* :func:`confusion_matrix(scores_or_preds, labels, num_classes)` -> Long
  ``[K, K]``, rows = true class, columns = predicted class.
* :func:`per_class_accuracy(...)` -> float ``[K]`` in percent (recall per
  class), NaN for classes with no sample.
* :func:`mean_class_accuracy(...)` -> percent: the mean of per-class accuracy
  over the classes that have samples.
* :func:`plot_confusion_matrix(cm, class_names, path)`: row-normalised
  heat map (matplotlib, Agg backend), names on the axes up to 60 classes.
* :func:`write_per_class_table(path, ...)`: CSV ``id,name,samples,correct,accuracy``.

``scores_or_preds`` may be ``[N, K]`` scores (argmax taken) or ``[N]`` class ids.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import torch

__all__ = ["accuracy_topk", "confusion_matrix", "per_class_accuracy", "mean_class_accuracy",
           "plot_confusion_matrix", "write_per_class_table"]


def _labels(labels, n: int | None = None) -> torch.Tensor:
    lab = torch.as_tensor(labels)
    if lab.dim() != 1 or lab.dtype.is_floating_point or lab.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor [N], got shape {tuple(lab.shape)}, dtype {lab.dtype}")
    if n is not None and lab.shape[0] != n:
        raise ValueError(f"labels has {lab.shape[0]} entries but the scores have {n} rows")
    if lab.numel() and lab.min() < 0:
        raise ValueError(f"labels must be >= 0, got {int(lab.min())}")
    return lab.long().cpu()


def _scores(scores) -> torch.Tensor:
    s = torch.as_tensor(scores)
    if s.dim() != 2 or not s.dtype.is_floating_point:
        raise ValueError(f"scores must be a float tensor [N, K], got shape {tuple(s.shape)}, dtype {s.dtype}")
    if s.shape[0] == 0:
        raise ValueError("scores are empty (N = 0): nothing to evaluate")
    return s.detach().float().cpu()


def accuracy_topk(scores, labels, ks: Sequence[int] = (1, 5)) -> list[float]:
    s = _scores(scores)
    lab = _labels(labels, s.shape[0])
    if lab.max() >= s.shape[1]:
        raise ValueError(f"label {int(lab.max())} out of range for {s.shape[1]} classes")
    if any(int(k) < 1 for k in ks):
        raise ValueError(f"ks must be >= 1, got {tuple(ks)}")
    kmax = min(max(int(k) for k in ks), s.shape[1])
    top = s.topk(kmax, dim=1).indices  # [N, kmax]
    hit = top == lab[:, None]
    return [100.0 * hit[:, : min(int(k), kmax)].any(dim=1).float().mean().item() for k in ks]


def _preds(scores_or_preds) -> torch.Tensor:
    x = torch.as_tensor(scores_or_preds)
    if x.dim() == 2:
        return _scores(x).argmax(dim=1)
    if x.dim() == 1 and not x.dtype.is_floating_point:
        return x.long().cpu()
    raise ValueError(f"expected scores [N, K] or integer predictions [N], got shape {tuple(x.shape)}, dtype {x.dtype}")


def confusion_matrix(scores_or_preds, labels, num_classes: int | None = None) -> torch.Tensor:
    x = torch.as_tensor(scores_or_preds)
    pred = _preds(x)
    lab = _labels(labels, pred.shape[0])
    if num_classes is None:
        num_classes = x.shape[1] if x.dim() == 2 else int(max(pred.max(), lab.max())) + 1
    if lab.numel() and (lab.max() >= num_classes or pred.max() >= num_classes or pred.min() < 0):
        raise ValueError(f"labels / predictions out of range for num_classes={num_classes}")
    return torch.bincount(lab * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(scores_or_preds, labels, num_classes: int | None = None) -> torch.Tensor:
    cm = confusion_matrix(scores_or_preds, labels, num_classes).double()
    support = cm.sum(dim=1)
    acc = 100.0 * cm.diagonal() / support
    acc[support == 0] = float("nan")
    return acc


def mean_class_accuracy(scores_or_preds, labels, num_classes: int | None = None) -> float:
    acc = per_class_accuracy(scores_or_preds, labels, num_classes)
    present = ~torch.isnan(acc)
    if not present.any():
        raise ValueError("mean_class_accuracy: no samples")
    return acc[present].mean().item()


def write_per_class_table(path, cm: torch.Tensor, class_names: Sequence[str] | None = None) -> None:
    """CSV with one row per class: ``id,name,samples,correct,accuracy`` (accuracy in percent, empty if no samples)."""
    cm = torch.as_tensor(cm)
    k = cm.shape[0]
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for a {k}x{k} confusion matrix")
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".", exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "name", "samples", "correct", "accuracy"])
        for i in range(k):
            n, c = int(cm[i].sum()), int(cm[i, i])
            w.writerow([i, names[i], n, c, f"{100.0 * c / n:.2f}" if n else ""])


def plot_confusion_matrix(cm, class_names: Sequence[str] | None, path, *, title: str = "Confusion matrix",
                          max_labels: int = 60) -> str:
    """Save a row-normalised confusion matrix as an image (PNG by the file's extension)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = torch.as_tensor(cm).double()
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"cm must be a square matrix, got shape {tuple(cm.shape)}")
    k = cm.shape[0]
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for a {k}x{k} confusion matrix")
    rows = cm.sum(dim=1, keepdim=True)
    norm = torch.where(rows > 0, cm / rows.clamp(min=1), torch.zeros_like(cm)).numpy()
    size = min(4 + 0.25 * k, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="Blues", interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if class_names is not None and k <= max_labels:
            ax.set_xticks(range(k), labels=list(class_names), rotation=90, fontsize=7)
            ax.set_yticks(range(k), labels=list(class_names), fontsize=7)
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    if cm[i, j] > 0:
                        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))) or ".", exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return os.fspath(path)
