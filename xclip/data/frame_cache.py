"""Decode each video once and keep its frames in memory (``data.cache_frames: true``).

For small data sets of short clips (the demo's: a few thousand 16-frame
32x32 videos, ~50 KB each as uint8) decoding an mp4 costs more than a
training step of a tiny model. :class:`FrameCache` holds every frame of each
video, decoded through the real decoder (:func:`xclip.data.video_io.open_video`)
the first time it is asked for; :func:`cached_dataset` returns a copy of a
:class:`xclip.data.VideoDataset` whose ``load`` reads from the cache and
otherwise does exactly what ``VideoDataset.load`` does (same frame sampling,
same per-(seed, epoch, index) augmentation draws, same views).

Not meant for big data sets: the whole decoded set must fit in memory
(``FrameCache.nbytes`` says how much it holds). With DataLoader workers the
cache should be filled first (:meth:`FrameCache.fill`), so forked workers
share it instead of each decoding again.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .dataset import VideoDataset
from .video_io import open_video

__all__ = ["FrameCache", "CachedVideoDataset", "cached_dataset"]


class FrameCache:
    """``path -> uint8 [N, H, W, 3]`` (all frames of the video), decoded on first use."""

    def __init__(self, decoder: str = "auto", decoder_threads: int = 1):
        self.decoder, self.decoder_threads = decoder, int(decoder_threads)
        self._frames: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self._frames)

    def __contains__(self, path: str) -> bool:
        return path in self._frames

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._frames.values())

    def get(self, path: str) -> torch.Tensor:
        t = self._frames.get(path)
        if t is None:
            with open_video(path, self.decoder, self.decoder_threads) as reader:
                n = len(reader)
                t = reader.get_frames(list(range(n))).contiguous()
            if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3 or t.shape[0] != n:
                raise ValueError(f"{path}: decoder returned {tuple(t.shape)} {t.dtype}, expected uint8 [{n}, H, W, 3]")
            self._frames[path] = t
        return t

    def fill(self, paths: Iterable[str], progress: bool = False, desc: str = "decoding videos") -> list[str]:
        """Decode every path not cached yet; returns the ones that failed (they are left out)."""
        todo = [p for p in dict.fromkeys(paths) if p not in self._frames]
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5)
        failed = []
        for p in todo:
            try:
                self.get(p)
            except Exception:  # the dataset reports it (and skips the video) when it is asked for
                failed.append(p)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return failed


def cached_dataset(ds: VideoDataset, cache: FrameCache) -> "CachedVideoDataset":
    """A copy of VideoDataset ``ds`` that reads frames from ``cache`` instead of decoding each time."""
    if not isinstance(ds, VideoDataset):
        raise ValueError(f"cached_dataset expects an xclip.data.VideoDataset, got {type(ds).__name__}")
    out = CachedVideoDataset.__new__(CachedVideoDataset)
    out.__dict__.update(ds.__dict__)
    out.frame_cache = cache
    return out


class CachedVideoDataset(VideoDataset):
    """VideoDataset whose frames come from a :class:`FrameCache` (build it with :func:`cached_dataset`)."""

    frame_cache: FrameCache

    def _read_frames(self, path: str, pick) -> tuple[list[list[int]], torch.Tensor]:
        # VideoDataset.load's decode replaced by a cache lookup; sampling and augmentation unchanged.
        all_frames = self.frame_cache.get(path)
        views_idx = pick(int(all_frames.shape[0]))
        flat = torch.as_tensor([i for v in views_idx for i in v], dtype=torch.long)
        return views_idx, all_frames.index_select(0, flat)
