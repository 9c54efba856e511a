"""Few-shot training lists: K videos per class, seeded and reproducible.

``make_kshot_list(list_file_or_items, k, seed, *, root=None, allow_fewer=False)``
-> ``[(path, label)]``: for every class (in label order) ``k`` videos drawn
without replacement by ``random.Random(seed)`` from the class's videos in
list order. Same input, ``k`` and seed -> same list. A class with fewer than
``k`` videos raises ``ValueError`` unless ``allow_fewer`` (then all its videos
are kept). A list file is read with paths as written (relative), or joined to
``root`` when given.

``write_kshot_lists(list_file, out_dir, ks=(2, 4, 8, 16), seed=0)`` writes
``<stem>_<k>shot_seed<seed>.txt`` in the official format and returns the paths.
"""

from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Sequence

from xclip.data.lists import parse_video_list, write_video_list

__all__ = ["make_kshot_list", "write_kshot_lists"]


def make_kshot_list(list_file_or_items, k: int, seed: int = 0, *, root=None,
                    allow_fewer: bool = False) -> list[tuple[str, int]]:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if isinstance(list_file_or_items, (str, os.PathLike)):
        items = parse_video_list(list_file_or_items, root)
    else:
        items = [(os.fspath(p), int(lab)) for p, lab in list_file_or_items]
    if not items:
        raise ValueError("make_kshot_list: no samples")
    by_class: dict[int, list[str]] = defaultdict(list)
    for p, lab in items:
        by_class[lab].append(p)
    rng = random.Random(f"kshot:{seed}:{k}")
    out: list[tuple[str, int]] = []
    for lab in sorted(by_class):
        vids = by_class[lab]
        if len(vids) < k:
            if not allow_fewer:
                raise ValueError(f"class {lab} has {len(vids)} video(s), fewer than k={k}")
            chosen = list(vids)
        else:
            chosen = rng.sample(vids, k)
        out.extend((p, lab) for p in chosen)
    return out


def write_kshot_lists(list_file, out_dir, ks: Sequence[int] = (2, 4, 8, 16), seed: int = 0,
                      allow_fewer: bool = False) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(os.fspath(list_file)))[0]
    paths = []
    for k in ks:
        path = os.path.join(out_dir, f"{stem}_{k}shot_seed{seed}.txt")
        write_video_list(make_kshot_list(list_file, k, seed, allow_fewer=allow_fewer), path)
        paths.append(path)
    return paths
