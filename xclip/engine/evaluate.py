"""Multi-view, multi-process evaluation.

``evaluate(model, loader, text_tokens_or_features, *, device="cpu",
amp_dtype=None, num_classes=None, desc="eval", progress=True,
max_clips_per_forward=None) -> dict``

* ``text_tokens_or_features``: integer tokens ``[K, 77]`` (from
  :func:`xclip.tokenize`; encoded ONCE with ``model.encode_text``) or float
  text features ``[K, E]``.
* Each batch ``{"video": [B, V, T, 3, H, W], ...}`` (from
  :func:`xclip.data.collate_videos`) is flattened to ``B * V`` clips,
  encoded with ``model.encode_video``, scored with
  ``model.logits_from_features`` and turned into per-view softmax
  probabilities; views are fused by summing (as the official test does) and
  divided by ``V``, so each row of ``probs`` is a probability vector.
* Under ``torch.distributed``: every rank evaluates its shard (use
  :func:`xclip.data.build_loader` with ``train=False``, which shards without
  padding duplicates), then results are gathered to every rank, de-duplicated
  by dataset index (so even a padding sampler counts each sample once) and
  sorted by index. ``skipped`` is summed over ranks.

Returned keys: ``top1``, ``top5``, ``mean_class_acc`` (percent; NaN when no
sample), ``num_samples``, ``skipped``, ``skipped_paths``, ``num_views``,
``probs`` (float ``[N, K]``), ``labels`` (Long ``[N]``), ``indices`` (Long ``[N]``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist

from xclip.runtime import autocast

from .metrics import accuracy_topk, mean_class_accuracy

__all__ = ["evaluate", "gather_results", "fuse_views"]

log = logging.getLogger("xclip.eval")


def fuse_views(logits: torch.Tensor, num_views: int) -> torch.Tensor:
    """``[B * V, K]`` logits (views of a video adjacent) -> ``[B, K]`` mean of per-view softmax."""
    if logits.dim() != 2 or logits.shape[0] % num_views:
        raise ValueError(f"fuse_views: logits {tuple(logits.shape)} do not split into views of {num_views}")
    p = logits.float().softmax(dim=-1)
    return p.view(-1, num_views, p.shape[-1]).sum(dim=1) / num_views


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_rows(t: torch.Tensor) -> list[torch.Tensor]:
    """All-gather tensors whose first dimension differs between ranks."""
    dev = _comm_device()
    n = torch.tensor([t.shape[0]], device=dev, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    m = max(sizes)
    padded = torch.zeros((m, *t.shape[1:]), dtype=t.dtype, device=dev)
    padded[: t.shape[0]] = t.to(dev)
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return [o[:s].cpu() for o, s in zip(out, sizes)]


def gather_results(probs: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor, skipped: int,
                   skipped_paths: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, list[str]]:
    """Gather every rank's rows (when distributed), keep one row per dataset index, sort by index."""
    if _dist_on():
        probs = torch.cat(_gather_rows(probs))
        labels = torch.cat(_gather_rows(labels))
        indices = torch.cat(_gather_rows(indices))
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (int(skipped), list(skipped_paths)))
        skipped = sum(s for s, _ in gathered)
        skipped_paths = [p for _, ps in gathered for p in ps]
    if indices.numel():
        order = torch.argsort(indices, stable=True)
        probs, labels, indices = probs[order], labels[order], indices[order]
        keep = torch.ones_like(indices, dtype=torch.bool)
        keep[1:] = indices[1:] != indices[:-1]
        if not keep.all():
            log.info("evaluate: dropped %d duplicate rows (padding sampler)", int((~keep).sum()))
        probs, labels, indices = probs[keep], labels[keep], indices[keep]
    return probs, labels, indices, skipped, skipped_paths


@torch.no_grad()
def evaluate(model, loader, text_tokens_or_features, *, device="cpu", amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None, desc: str = "eval", progress: bool = True,
             max_clips_per_forward: int | None = None) -> dict[str, Any]:
    device = torch.device(device)
    text = torch.as_tensor(text_tokens_or_features)
    if text.dim() != 2:
        raise ValueError(f"text_tokens_or_features must be tokens [K, L] or features [K, E], got {tuple(text.shape)}")
    has_feats = hasattr(model, "encode_video") and hasattr(model, "logits_from_features")
    amp = autocast(device, amp_dtype)
    was_training = model.training
    model.eval()
    try:
        with amp:
            if text.is_floating_point():
                if not has_feats:
                    raise ValueError("text features need a model with encode_video and logits_from_features")
                text_emb = text.to(device)
            else:
                text = text.to(device)
                text_emb = model.encode_text(text) if has_feats else None
        K = text.shape[0]
        probs_l, labels_l, idx_l = [], [], []
        skipped, skipped_paths = 0, []
        rank0 = not _dist_on() or dist.get_rank() == 0
        it = loader
        if progress and rank0:
            from tqdm.auto import tqdm

            it = tqdm(loader, desc=desc, total=len(loader) if hasattr(loader, "__len__") else None, leave=False)
        num_views = None
        for batch in it:
            skipped += int(batch.get("skipped", 0))
            skipped_paths += list(batch.get("skipped_paths", []))
            video = batch["video"]
            if video.shape[0] == 0:
                continue
            if video.dim() != 6:
                raise ValueError(f"evaluate: batch['video'] must be [B, V, T, 3, H, W], got {tuple(video.shape)}")
            B, V = video.shape[:2]
            num_views = V
            clips = video.flatten(0, 1).to(device, non_blocking=True)
            step = max_clips_per_forward or clips.shape[0]
            logits = []
            with amp:
                for s in range(0, clips.shape[0], step):
                    x = clips[s:s + step]
                    if has_feats:
                        v_emb, p_emb = model.encode_video(x)
                        logits.append(model.logits_from_features(v_emb, p_emb, text_emb).float())
                    else:
                        logits.append(model(x, text).float())
            probs_l.append(fuse_views(torch.cat(logits), V).cpu())
            labels_l.append(batch["label"].long().cpu())
            idx_l.append(batch["index"].long().cpu())
    finally:
        model.train(was_training)

    probs = torch.cat(probs_l) if probs_l else torch.zeros(0, K)
    labels = torch.cat(labels_l) if labels_l else torch.zeros(0, dtype=torch.long)
    indices = torch.cat(idx_l) if idx_l else torch.zeros(0, dtype=torch.long)
    probs, labels, indices, skipped, skipped_paths = gather_results(probs, labels, indices, skipped, skipped_paths)
    n = int(labels.numel())
    nc = num_classes or K
    if n:
        top1, top5 = accuracy_topk(probs, labels, ks=(1, 5))
        mca = mean_class_accuracy(probs.argmax(1), labels, nc)
    else:
        top1 = top5 = mca = math.nan
    if skipped:
        log.warning("%s: %d video(s) could not be decoded and were skipped: %s", desc, skipped,
                    ", ".join(sorted(set(skipped_paths))[:20]))
    return {"top1": top1, "top5": top5, "mean_class_acc": mca, "num_samples": n, "skipped": int(skipped),
            "skipped_paths": skipped_paths, "num_views": num_views, "num_classes": nc,
            "probs": probs, "labels": labels, "indices": indices}
