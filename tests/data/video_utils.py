"""Tiny real test videos (PyAV / libx264), shared by the data, eval and train tests.

``make_video(path, num_frames=16, height=48, width=64, seed=0)`` writes an mp4
whose frame ``t`` carries its index in the green channel (uniform level
``8 + 15 * t`` for t < 16, so :func:`frame_ids` recovers sampled indices from
decoded pixels), a red horizontal gradient and a moving blue square.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from xclip.data import write_video

GREEN_BASE, GREEN_STEP = 8, 15


def synth_frames(num_frames: int = 16, height: int = 48, width: int = 64, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    f = np.zeros((num_frames, height, width, 3), np.uint8)
    f[..., 0] = np.linspace(0, 255, width, dtype=np.float64).astype(np.uint8)[None, None, :]
    for t in range(num_frames):
        f[t, :, :, 1] = (GREEN_BASE + GREEN_STEP * t) % 256
        y = int(rng.integers(0, max(height - 12, 1)))
        x = (4 * t + int(rng.integers(0, width))) % max(width - 12, 1)
        f[t, y:y + 12, x:x + 12, 2] = 255
    return torch.from_numpy(f)


def make_video(path, num_frames: int = 16, height: int = 48, width: int = 64, seed: int = 0, fps: int = 8) -> str:
    write_video(path, synth_frames(num_frames, height, width, seed), fps=fps)
    return os.fspath(path)


def frame_ids(frames_uint8: torch.Tensor) -> list[int]:
    """Recover frame indices from decoded ``[T, H, W, 3]`` frames of :func:`make_video`."""
    g = frames_uint8[..., 1].float().flatten(1).median(dim=1).values
    return [int(round((v.item() - GREEN_BASE) / GREEN_STEP)) for v in g]


def make_corrupt_video(path, kind: str = "garbage") -> str:
    """A file that cannot be decoded: random bytes, or a valid mp4 cut short."""
    path = os.fspath(path)
    if kind == "garbage":
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif kind == "truncated":
        make_video(path)
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 3])
    else:
        raise ValueError(f"kind must be 'garbage' or 'truncated', got {kind!r}")
    return path


def make_dataset(root, num_videos: int = 6, num_classes: int = 3, num_frames: int = 16, height: int = 48,
                 width: int = 64, list_name: str = "list.txt") -> tuple[str, str, list[tuple[str, int]]]:
    """Write ``num_videos`` videos under ``root/cls<k>/``, a list file and a labels CSV.

    Returns (list_file, labels_csv, [(relative_path, label)]).
    """
    root = os.fspath(root)
    items = []
    for i in range(num_videos):
        label = i % num_classes
        rel = f"cls{label}/video_{i}.mp4"
        make_video(os.path.join(root, rel), num_frames, height, width, seed=i)
        items.append((rel, label))
    list_file = os.path.join(root, list_name)
    with open(list_file, "w") as f:
        f.writelines(f"{rel} {lab}\n" for rel, lab in items)
    labels = os.path.join(root, "labels.csv")
    with open(labels, "w") as f:
        f.write("id,name\n" + "".join(f"{k},class {k}\n" for k in range(num_classes)))
    return list_file, labels, items
