"""One builder for data sets and loaders from the data config.

Training, evaluation, ``xclip predict`` and the demo all build their data
through :func:`build_dataset` and :func:`build_data_loader`, so every one of
them reads the same keys (``data.sampling``, ``decoder``, ``mean``, ``std``,
``crop_pct``, ``augment``, ``num_workers``, ``cache_frames``) the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xclip.config import ConfigError, DataConfig

from .dataset import VideoDataset
from .loader import build_loader
from .transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, train_transform

__all__ = ["build_dataset", "build_data_loader"]


def build_dataset(data: DataConfig, source: str | Sequence[tuple[str, int]], *, mode: str, num_frames: int,
                  input_size: int | None = None, num_clips: int = 1, num_crops: int = 1, seed: int = 0,
                  frame_cache=None, root: str | None = None, check_files: bool = True) -> Any:
    """A :class:`VideoDataset` over ``source`` (a list file or ``[(path, label)]``) as ``data`` describes.

    ``input_size`` defaults to ``data.input_size`` (evaluation passes the
    model's resolution); ``root`` to ``data.root``. In ``train`` mode a
    ``data.augment`` mapping replaces the default augmentation. With a
    ``frame_cache`` (:class:`xclip.data.frame_cache.FrameCache`) decoded frames
    come from memory.
    """
    ds = VideoDataset(source, data.root if root is None else root, num_frames=int(num_frames), mode=mode,
                      input_size=int(input_size or data.input_size), num_clips=num_clips, num_crops=num_crops,
                      sampling=data.sampling, decoder=data.decoder, decode_device=data.decode_device,
                      mean=tuple(data.mean) if data.mean is not None else IMAGENET_MEAN,
                      std=tuple(data.std) if data.std is not None else IMAGENET_STD,
                      crop_pct=DEFAULT_CROP_PCT if data.crop_pct is None else float(data.crop_pct),
                      seed=int(seed), check_files=check_files)
    if mode == "train" and data.augment:
        opts = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.augment.items()}
        try:
            ds.transform = train_transform(ds.input_size, ds.mean, ds.std, **{"crop_pct": ds.crop_pct, **opts})
        except TypeError as e:
            raise ConfigError(f"data.augment: {e}") from None
    if frame_cache is not None:
        from .frame_cache import cached_dataset

        ds = cached_dataset(ds, frame_cache)
    return ds


def build_data_loader(data: DataConfig, dataset, batch_size: int, *, train: bool, distributed: bool | None = None,
                      seed: int = 0, num_workers: int | None = None, **kwargs):
    """A DataLoader over ``dataset`` with ``data.num_workers`` workers (``num_workers`` overrides it)."""
    workers = data.num_workers if num_workers is None else int(num_workers)
    return build_loader(dataset, int(batch_size), train=train, num_workers=workers, distributed=distributed,
                        seed=int(seed), drop_last=True if train else None, **kwargs)
