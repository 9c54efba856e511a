"""DataLoaders that keep a GPU fed.

``build_loader(dataset, batch_size, *, train, num_workers=2, distributed=None,
seed=0, drop_last=None, pin_memory=None, persistent_workers=None)``

* ``distributed=None``: on when ``torch.distributed`` is initialised.
  Training uses ``DistributedSampler`` (shuffled, seeded, padded to equal
  shards as usual); evaluation uses :class:`ShardSampler`, which hands each
  sample to exactly one rank (``rank, rank + world, ...``), with no padding
  duplicates, so shards may differ in length by one.
* Single process: a seeded ``RandomSampler`` (train) or sequential order.
* ``drop_last`` defaults to ``train``; ``pin_memory`` to CUDA availability;
  ``persistent_workers`` to ``num_workers > 0``; ``prefetch_factor=4`` with
  workers; collation by :func:`xclip.data.collate_videos`.

Call :func:`set_epoch(loader, epoch)` at the start of every epoch: it calls
``sampler.set_epoch`` (new shuffle) and ``dataset.set_epoch`` (new, but
reproducible, frame and augmentation draws). With persistent workers the
dataset copies live in the worker processes, so the epoch travels with each
index instead: the loader's sampler yields ``(epoch, index)`` pairs that
:class:`xclip.data.VideoDataset` understands (see ``_EpochTaggedSampler``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler

from .dataset import collate_videos

__all__ = ["build_loader", "set_epoch", "ShardSampler"]


class ShardSampler(Sampler[int]):
    """Evaluation sharding: rank ``r`` of ``w`` gets indices ``r, r + w, r + 2w, ...``.

    Every index goes to exactly one rank; no padding, no duplicates.
    """

    def __init__(self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None):
        import torch.distributed as dist

        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("ShardSampler: pass num_replicas and rank, or initialise torch.distributed")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"ShardSampler: rank {rank} not in [0, {num_replicas})")
        self.n, self.num_replicas, self.rank = len(dataset), int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.n - self.rank) / self.num_replicas))

    def set_epoch(self, epoch: int) -> None:  # order does not depend on the epoch
        pass


class _EpochTaggedSampler(Sampler):
    """Wraps a sampler; yields ``(epoch, index)`` so worker-side datasets see the epoch."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self):
        e = self.epoch
        return ((e, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def build_loader(dataset: Dataset, batch_size: int, *, train: bool, num_workers: int = 2,
                 distributed: bool | None = None, seed: int = 0, drop_last: bool | None = None,
                 pin_memory: bool | None = None, persistent_workers: bool | None = None,
                 prefetch_factor: int | None = 4) -> DataLoader:
    import torch.distributed as dist

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("build_loader(distributed=True) needs torch.distributed to be initialised")
    drop_last = train if drop_last is None else drop_last
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    persistent_workers = (num_workers > 0) if persistent_workers is None else (persistent_workers and num_workers > 0)

    if distributed:
        if train:
            sampler: Sampler = DistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last)
        else:
            sampler = ShardSampler(dataset)
    elif train:
        sampler = _SeededRandomSampler(dataset, seed)
    else:
        sampler = SequentialSampler(dataset)

    tagged = hasattr(dataset, "set_epoch") and hasattr(dataset, "_get")
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
        kwargs["persistent_workers"] = persistent_workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=_EpochTaggedSampler(sampler) if tagged else sampler,
                        num_workers=num_workers, collate_fn=collate_videos, pin_memory=pin_memory,
                        drop_last=drop_last, **kwargs)
    return loader


class _SeededRandomSampler(Sampler[int]):
    """Shuffle that is a function of (seed, epoch): resumable, unlike a stateful RandomSampler."""

    def __init__(self, dataset: Dataset, seed: int):
        self.n, self.seed, self.epoch = len(dataset), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Start epoch ``epoch``: re-shuffle the sampler and re-seed the dataset's draws."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
