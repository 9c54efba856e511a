"""``VideoDataset`` and ``collate_videos``.

``VideoDataset(list_file, root, *, num_frames=8, mode="train"|"test",
input_size=224, num_clips=1, num_crops=1, sampling="segment"|"dense",
frame_interval=2, decoder="auto"|"torchcodec"|"pyav"|"decord", decoder_threads=1, decode_device="cpu",
mean=IMAGENET_MEAN, std=IMAGENET_STD, seed=0, check_files=True, crop_pct=0.875)``

* ``list_file``: an official-format list (``relative/path.mp4 <label>``) read
  relative to ``root``, or a ready sequence of ``(path, label)`` pairs (then
  ``root`` joins relative paths and may be ``None``).
* ``ds[i]`` -> ``{"video": float [V, T, 3, H, W] normalised, "label": int,
  "index": int}`` with ``V = num_clips * num_crops`` in test mode (clip-major:
  view ``v = clip * num_crops + crop``) and ``V = 1`` in train mode; or
  ``None`` when the video cannot be opened / decoded, after a
  ``warnings.warn`` naming the file (and ``ds.skipped`` counts it in the
  process that decoded it; in DataLoader workers, use the batch's
  ``"skipped"``/``"skipped_paths"`` from :func:`collate_videos`).
* ``ds.missing``: files absent at construction (one warning listing them;
  they are excluded from the samples, so ``len(ds)`` counts present files).
  ``check_files=False`` skips the check (and decoding then fails/skips).
* ``ds.set_epoch(e)``: training randomness (frame choice and augmentation) is
  a pure function of ``(seed, epoch, index)``: a resumed run, any number of
  workers, any order, draws the same frames and crops. Test mode is fully
  deterministic (see :mod:`xclip.data.sampling`).

``collate_videos(items)`` stacks the decodable items and drops the rest:
``{"video": [B, V, T, 3, H, W], "label": Long [B], "index": Long [B],
"skipped": int, "skipped_paths": list[str]}`` (B may be 0).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .lists import parse_video_list
from .sampling import sample_indices
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, test_transform, train_transform
from .video_io import DECODERS, VideoDecodeError, check_decode_device, open_video

__all__ = ["VideoDataset", "collate_videos", "SkippedVideo", "SkipTracker"]

log = logging.getLogger("xclip.data")


class SkippedVideo(NamedTuple):
    """What the DataLoader path (``__getitems__``) yields for an undecodable video."""

    path: str
    index: int
    error: str


class VideoDataset(Dataset):
    def __init__(self, list_file, root=None, *, num_frames: int = 8, mode: str = "train",
                 input_size: int = 224, num_clips: int = 1, num_crops: int = 1, sampling: str = "segment",
                 frame_interval: int = 2, decoder: str = "auto", decoder_threads: int = 1,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 seed: int = 0, check_files: bool = True, crop_pct: float = DEFAULT_CROP_PCT,
                 decode_device: str = "cpu"):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        for name, val in (("num_frames", num_frames), ("input_size", input_size), ("num_clips", num_clips),
                          ("frame_interval", frame_interval)):
            if not isinstance(val, (int, np.integer)) or val < 1:
                raise ValueError(f"{name} must be a positive integer, got {val!r}")
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops!r}")
        if decoder_threads < 0:
            raise ValueError(f"decoder_threads must be >= 0, got {decoder_threads}")
        self.decode_device = check_decode_device(decode_device, decoder, key="decode_device")  # cuda: NVDEC

        if isinstance(list_file, (str, os.PathLike)):
            if root is None:
                raise ValueError("VideoDataset: root is required with a list file")
            items = parse_video_list(list_file, root)
            self.list_file = os.fspath(list_file)
        else:
            items = []
            for k, it in enumerate(list_file):
                try:
                    p, lab = it
                    lab = int(lab)
                except (TypeError, ValueError):
                    raise ValueError(f"VideoDataset: item {k} is not a (path, label) pair: {it!r}") from None
                p = os.fspath(p)
                if root is not None and not os.path.isabs(p):
                    p = os.path.join(os.fspath(root), p)
                items.append((os.path.abspath(p), lab))
            if not items:
                raise ValueError("VideoDataset: empty list of samples")
            self.list_file = None
        self.root = None if root is None else os.fspath(root)

        self.missing: list[str] = []
        if check_files:
            present = []
            for p, lab in items:
                (present if os.path.isfile(p) else self.missing).append((p, lab))
            self.missing = [p for p, _ in self.missing]
            if self.missing:
                shown = "\n  ".join(self.missing[:20])
                more = f"\n  ... and {len(self.missing) - 20} more" if len(self.missing) > 20 else ""
                msg = (f"{len(self.missing)} of {len(items)} videos listed in "
                       f"{self.list_file or 'the sample list'} are missing and will be skipped:\n  {shown}{more}")
                warnings.warn(msg, stacklevel=2)
                log.warning(msg)
            items = present
        self.samples: list[tuple[str, int]] = items

        self.num_frames, self.mode, self.input_size = int(num_frames), mode, int(input_size)
        self.train = mode == "train"
        self.num_clips = 1 if self.train else int(num_clips)
        self.num_crops = 1 if self.train else int(num_crops)
        self.sampling, self.frame_interval = sampling, int(frame_interval)
        self.decoder, self.decoder_threads = decoder, int(decoder_threads)
        self.mean, self.std = tuple(mean), tuple(std)
        self.crop_pct = float(crop_pct)
        self.seed, self.epoch = int(seed), 0
        self.skipped = 0
        self.skipped_paths: list[str] = []
        if self.train:
            self.transform = train_transform(self.input_size, self.mean, self.std, crop_pct=self.crop_pct)
        else:
            self.transform = test_transform(self.input_size, self.num_crops, self.mean, self.std, crop_pct=self.crop_pct)

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [lab for _, lab in self.samples]

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __repr__(self) -> str:
        return (f"VideoDataset({len(self)} videos, mode={self.mode}, T={self.num_frames}, "
                f"size={self.input_size}, views={self.num_clips}x{self.num_crops}, sampling={self.sampling}, "
                f"decoder={self.decoder}, missing={len(self.missing)})")

    # ---------------------------------------------------------------- loading
    def _seed_for(self, index: int, epoch: int) -> list[int]:
        return [self.seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, int(index) & 0xFFFFFFFF]

    @staticmethod
    def _split_key(key) -> tuple[int | None, int]:
        # build_loader's sampler yields (epoch, index) so worker copies see the epoch.
        if isinstance(key, tuple):
            if len(key) != 2:
                raise IndexError(f"expected an index or (epoch, index), got {key!r}")
            return int(key[0]), int(key[1])
        return None, int(key)

    def load(self, index: int, epoch: int | None = None) -> dict[str, Any]:
        """Decode and transform sample ``index``; raises :class:`VideoDecodeError` on failure.

        ``epoch`` (default: the one from :meth:`set_epoch`) seeds training draws.
        """
        epoch = self.epoch if epoch is None else int(epoch)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        index = index % len(self)
        path, label = self.samples[index]
        rng = np.random.default_rng(self._seed_for(index, epoch)) if self.train else None

        def pick(num_video_frames: int) -> list[list[int]]:
            return sample_indices(num_video_frames, self.num_frames, sampling=self.sampling, train=self.train,
                                  num_clips=self.num_clips, frame_interval=self.frame_interval, rng=rng)

        views_idx, frames = self._read_frames(path, pick)
        h, w = frames.shape[1:3]
        clips = frames.permute(0, 3, 1, 2).reshape(len(views_idx), self.num_frames, 3, h, w)
        if self.train:
            aug_seed = int(rng.integers(2**63 - 1))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(aug_seed)
                views = [self.transform(clips[0].contiguous())]
        else:
            views = [crop for c in range(clips.shape[0]) for crop in self.transform(clips[c].contiguous())]
        video = torch.stack(views).contiguous()
        return {"video": video, "label": int(label), "index": int(index)}

    def _read_frames(self, path: str, pick) -> tuple[list[list[int]], torch.Tensor]:
        """Decode the frames ``pick(num_frames_in_video)`` selects: (view indices, uint8 [C*T, H, W, 3]).

        Subclasses replace where frames come from (e.g. an in-memory cache); sampling
        and augmentation in :meth:`load` stay the same.
        """
        with open_video(path, self.decoder, self.decoder_threads, device=self.decode_device) as reader:
            views_idx = pick(len(reader))
            frames = reader.get_frames([i for v in views_idx for i in v])
        return views_idx, frames

    def _get(self, key) -> dict[str, Any] | SkippedVideo:
        epoch, index = self._split_key(key)
        try:
            return self.load(index, epoch)
        except IndexError:
            raise
        except Exception as e:  # any decode / transform failure: skip, never kill the run
            path = self.samples[index % len(self)][0]
            msg = f"skipping video {path}: {type(e).__name__}: {e}"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            self.skipped += 1
            self.skipped_paths.append(path)
            return SkippedVideo(path, int(index), f"{type(e).__name__}: {e}")

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        out = self._get(index)
        return None if isinstance(out, SkippedVideo) else out

    def __getitems__(self, indices: Sequence) -> list[dict[str, Any] | SkippedVideo]:
        # Used by DataLoader's batched fetch: keeps the failed file's path for collate_videos.
        return [self._get(i) for i in indices]


def collate_videos(items: Sequence[dict[str, Any] | SkippedVideo | None]) -> dict[str, Any]:
    good = [it for it in items if isinstance(it, dict)]
    bad = [it for it in items if not isinstance(it, dict)]
    paths = [it.path for it in bad if isinstance(it, SkippedVideo)]
    if good:
        shapes = {tuple(it["video"].shape) for it in good}
        if len(shapes) != 1:
            raise ValueError(f"collate_videos: videos of different shapes in one batch: {sorted(shapes)}")
        video = torch.stack([it["video"] for it in good])
    else:
        video = torch.zeros(0, 0, 0, 3, 0, 0)
    return {
        "video": video,
        "label": torch.tensor([int(it["label"]) for it in good], dtype=torch.long),
        "index": torch.tensor([int(it["index"]) for it in good], dtype=torch.long),
        "skipped": len(bad),
        "skipped_paths": paths,
    }


class SkipTracker:
    """Sums ``batch["skipped"]`` over an epoch and reports it once at the end.

    >>> tracker = SkipTracker()
    >>> for batch in loader: tracker.update(batch); ...
    >>> tracker.report("epoch 3")   # logs/warns "epoch 3: 2 videos skipped: a.mp4, b.mp4"
    """

    def __init__(self):
        self.count = 0
        self.paths: list[str] = []

    def update(self, batch: dict[str, Any]) -> None:
        self.count += int(batch.get("skipped", 0))
        self.paths.extend(batch.get("skipped_paths", []))

    def all_reduce(self) -> "SkipTracker":
        """Sum counts (and gather paths) over ranks when torch.distributed is initialised."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (self.count, self.paths))
            self.count = sum(c for c, _ in gathered)
            self.paths = [p for _, ps in gathered for p in ps]
        return self

    def report(self, what: str = "epoch", logger: logging.Logger | None = None) -> str | None:
        if not self.count:
            return None
        uniq = sorted(set(self.paths))
        shown = ", ".join(uniq[:20]) + (f", ... ({len(uniq) - 20} more)" if len(uniq) > 20 else "")
        msg = f"{what}: {self.count} video(s) could not be decoded and were skipped" + (f": {shown}" if uniq else "")
        (logger or log).warning(msg)
        return msg

    def reset(self) -> None:
        self.count, self.paths = 0, []
