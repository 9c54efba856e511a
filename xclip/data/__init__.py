"""Video data pipeline: lists, decoding, sampling, transforms, datasets, loaders.

Public interface (stable; the training and evaluation code build on it):

* :func:`read_video_list(list_file, root)` -> ``[(absolute_path, label)]``;
  ``ValueError`` naming file and line for malformed lines.
* :func:`read_labels(path_or_commalist)` -> ``[name, ...]`` from a labels CSV
  (``id,name``, optional header) or ``"a,b,c"``.
* :class:`VideoDataset` (``ds[i]`` -> ``{"video" [V, T, 3, H, W], "label",
  "index"}`` or ``None`` for an undecodable video; ``ds.missing``;
  ``ds.set_epoch``), see :mod:`xclip.data.dataset`.
* :func:`collate_videos`, :class:`SkipTracker`.
* :func:`build_loader(dataset, batch_size, *, train, ...)` and
  :func:`set_epoch(loader, epoch)`, see :mod:`xclip.data.loader`.
* :func:`write_video(path, frames_uint8 [T, H, W, 3], fps=8)`,
  :func:`open_video(path, decoder="auto")`, see :mod:`xclip.data.video_io`.
* :func:`build_dataset(data_config, source, *, mode, num_frames, ...)` and
  :func:`build_data_loader(data_config, dataset, batch_size, *, train, ...)`:
  the one builder from the data config (:mod:`xclip.data.build`).
* :class:`FrameCache`, :func:`cached_dataset` (:mod:`xclip.data.frame_cache`).
* sampling (:mod:`xclip.data.sampling`) and transforms
  (:mod:`xclip.data.transforms`, ``IMAGENET_MEAN``/``IMAGENET_STD``).
"""

from .build import build_data_loader, build_dataset
from .dataset import SkippedVideo, SkipTracker, VideoDataset, collate_videos
from .lists import check_list_labels, parse_video_list, read_labels, read_video_list, write_video_list
from .loader import ShardSampler, build_loader, set_epoch
from .sampling import dense_indices, sample_indices, segment_indices
from .transforms import IMAGENET_MEAN, IMAGENET_STD, scale_size, test_transform, train_transform
from .video_io import VideoDecodeError, open_video, write_video
from .frame_cache import FrameCache, cached_dataset

__all__ = [
    "read_video_list", "read_labels", "parse_video_list", "write_video_list", "check_list_labels",
    "VideoDataset", "collate_videos", "SkippedVideo", "SkipTracker",
    "build_loader", "set_epoch", "ShardSampler", "build_dataset", "build_data_loader", "FrameCache", "cached_dataset",
    "segment_indices", "dense_indices", "sample_indices",
    "IMAGENET_MEAN", "IMAGENET_STD", "scale_size", "train_transform", "test_transform",
    "VideoDecodeError", "open_video", "write_video",
]
