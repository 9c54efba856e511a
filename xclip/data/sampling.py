"""Frame sampling: which frame indices make up a clip.

Segment sampling (TSN-style, the X-CLIP recipe), for a video of ``n`` frames
and ``T`` frames per clip: the video is cut into ``T`` integer segments
``[lo_i, hi_i)`` with ``lo_i = (i * n) // T`` and ``hi_i = ((i + 1) * n) // T``.

* training: one uniformly random frame per segment;
* testing, ``num_clips = C`` deterministic views: view ``c`` takes frame
  ``lo_i + ((2c + 1) * (hi_i - lo_i)) // (2C)`` of segment ``i``: for ``C = 1``
  the segment's centre ``lo_i + (hi_i - lo_i) // 2``; for ``C > 1`` views
  spread evenly over each segment. (The official multi-view test re-runs the
  random training sampler, so its numbers change from run to run.)
* ``n < T``: segment ``i`` is the single frame ``(i * n) // T`` (frames repeat).

Dense sampling (SlowFast / I3D style): ``T`` frames ``interval`` apart, a
window of ``span = (T - 1) * interval + 1`` frames.

* training: window start uniform in ``[0, n - span]``;
* testing, ``C`` views: starts ``(c * (n - span)) // (C - 1)`` (first to last
  window) for ``C > 1``, ``(n - span) // 2`` (the centre) for ``C = 1``;
* a video shorter than the window: start 0, indices past the end repeat the
  last frame.

All functions return ``list[list[int]]`` (one index list per view) and take a
``numpy.random.Generator`` for the random (training) case.
"""

from __future__ import annotations

import numpy as np

__all__ = ["segment_indices", "dense_indices", "sample_indices"]


def _check(n: int, t: int, num_clips: int) -> None:
    if n < 1:
        raise ValueError(f"video has {n} frames; need at least 1")
    if t < 1:
        raise ValueError(f"num_frames must be >= 1, got {t}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")


def segment_indices(n: int, t: int, *, train: bool, num_clips: int = 1,
                    rng: np.random.Generator | None = None) -> list[list[int]]:
    _check(n, t, num_clips)
    lo = [(i * n) // t for i in range(t)]
    hi = [((i + 1) * n) // t for i in range(t)]
    if n < t:
        return [list(lo) for _ in range(1 if train else num_clips)]
    if train:
        if rng is None:
            raise ValueError("segment_indices(train=True) needs an rng")
        return [[lo[i] + int(rng.integers(hi[i] - lo[i])) for i in range(t)]]
    return [[lo[i] + ((2 * c + 1) * (hi[i] - lo[i])) // (2 * num_clips) for i in range(t)]
            for c in range(num_clips)]


def dense_indices(n: int, t: int, interval: int, *, train: bool, num_clips: int = 1,
                  rng: np.random.Generator | None = None) -> list[list[int]]:
    _check(n, t, num_clips)
    if interval < 1:
        raise ValueError(f"frame_interval must be >= 1, got {interval}")
    span = (t - 1) * interval + 1
    max_start = max(n - span, 0)
    if train:
        if rng is None:
            raise ValueError("dense_indices(train=True) needs an rng")
        starts = [int(rng.integers(max_start + 1))]
    elif num_clips == 1:
        starts = [max_start // 2]
    else:
        starts = [(c * max_start) // (num_clips - 1) for c in range(num_clips)]
    return [[min(s + j * interval, n - 1) for j in range(t)] for s in starts]


def sample_indices(n: int, t: int, *, sampling: str = "segment", train: bool, num_clips: int = 1,
                   frame_interval: int = 2, rng: np.random.Generator | None = None) -> list[list[int]]:
    """Dispatch to :func:`segment_indices` or :func:`dense_indices`."""
    if sampling == "segment":
        return segment_indices(n, t, train=train, num_clips=num_clips, rng=rng)
    if sampling == "dense":
        return dense_indices(n, t, frame_interval, train=train, num_clips=num_clips, rng=rng)
    raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
