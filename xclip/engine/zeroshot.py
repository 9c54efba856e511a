"""Zero-shot protocols (X-CLIP paper, section 4.3).

* HMDB-51 / UCF-101: evaluate on the three official test splits with all
  51 / 101 class names; report mean ± std of top-1 over the splits.
  :func:`hmdb51_test_splits` and :func:`ucf101_test_splits` read the official
  split files; :func:`hmdb_ucf_splits` dispatches by dataset name.
* Kinetics-600: the classes of Kinetics-600 that are not in Kinetics-400
  (220 with the official lists), split into three seeded random subsets of
  160 classes each (:func:`k600_novel_splits`); evaluate each subset with its
  160 names; report mean ± std.
* :func:`restrict_to_classes` remaps a video list to a class subset.
* :func:`summarise_splits(list_of_top1) -> (mean, std)`; std is the
  population std (``ddof=0``) unless told otherwise.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence

import numpy as np

__all__ = ["hmdb51_test_splits", "ucf101_test_splits", "hmdb_ucf_splits", "k600_novel_splits",
           "normalise_class_name", "restrict_to_classes", "summarise_splits"]


def normalise_class_name(name: str) -> str:
    """Case, underscores, quotes and repeated spaces do not distinguish class names across list versions."""
    s = name.strip().lower().replace("_", " ").replace('"', "").replace("'", "")
    return re.sub(r"\s+", " ", s)


def k600_novel_splits(k600_classes: Sequence[str], k400_classes: Sequence[str], *, seed: int = 0,
                      n_splits: int = 3, size: int = 160) -> list[list[str]]:
    """``n_splits`` seeded random subsets of ``size`` classes of K600 that are not in K400.

    Each subset is drawn independently (without replacement within a subset)
    and listed in K600 order. Same inputs and seed -> same splits.
    """
    if len(set(k600_classes)) != len(k600_classes):
        raise ValueError("k600_classes contains duplicate names")
    known = {normalise_class_name(c) for c in k400_classes}
    novel = [c for c in k600_classes if normalise_class_name(c) not in known]
    if len(novel) < size:
        raise ValueError(f"only {len(novel)} Kinetics-600 classes are not in Kinetics-400; cannot draw {size}")
    if n_splits < 1:
        raise ValueError(f"n_splits must be >= 1, got {n_splits}")
    rng = random.Random(seed)
    order = {c: i for i, c in enumerate(novel)}
    return [sorted(rng.sample(novel, size), key=order.__getitem__) for _ in range(n_splits)]


def restrict_to_classes(items: Sequence[tuple[str, int]], class_names: Sequence[str],
                        subset: Sequence[str]) -> list[tuple[str, int]]:
    """Keep the samples whose class is in ``subset``; labels become positions in ``subset``."""
    pos = {n: i for i, n in enumerate(class_names)}
    missing = [s for s in subset if s not in pos]
    if missing:
        raise ValueError(f"classes not in the label set: {missing[:10]}")
    remap = {pos[s]: j for j, s in enumerate(subset)}
    return [(p, remap[lab]) for p, lab in items if lab in remap]


def _check_split(split: int) -> None:
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")


def ucf101_test_splits(split_dir, *, splits: Sequence[int] = (1, 2, 3)) -> tuple[list[str], list[list[tuple[str, int]]]]:
    """UCF-101 (``ucfTrainTestlist``): ``classInd.txt`` (``1 ApplyEyeMakeup``) and ``testlist0{1,2,3}.txt``.

    Returns (class names in classInd order, [[(relative_path, label 0..100)] per split]).
    Class names are returned as in classInd (CamelCase); :func:`split_camel` makes prompts.
    """
    ind = os.path.join(split_dir, "classInd.txt")
    if not os.path.isfile(ind):
        raise ValueError(f"UCF-101 split folder {split_dir!r} has no classInd.txt")
    classes: dict[int, str] = {}
    with open(ind) as f:
        for ln, line in enumerate(f, 1):
            if line.strip():
                parts = line.split()
                if len(parts) != 2 or not parts[0].isdigit():
                    raise ValueError(f"{ind}, line {ln}: expected '<id> <ClassName>', got {line.strip()!r}")
                classes[int(parts[0]) - 1] = parts[1]
    names = [classes[i] for i in sorted(classes)]
    by_name = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for s in splits:
        _check_split(s)
        path = os.path.join(split_dir, f"testlist0{s}.txt")
        if not os.path.isfile(path):
            raise ValueError(f"UCF-101 split file {path!r} does not exist")
        items = []
        with open(path) as f:
            for ln, line in enumerate(f, 1):
                rel = line.strip().split()[0] if line.strip() else ""
                if not rel:
                    continue
                cls = rel.split("/")[0].lower()
                if cls not in by_name:
                    raise ValueError(f"{path}, line {ln}: class folder {cls!r} not in classInd.txt")
                items.append((rel, by_name[cls]))
        out.append(items)
    return names, out


def hmdb51_test_splits(split_dir, *, splits: Sequence[int] = (1, 2, 3),
                       video_ext: str | None = None) -> tuple[list[str], list[list[tuple[str, int]]]]:
    """HMDB-51 (``testTrainMulti_7030_splits``): ``<class>_test_split{1,2,3}.txt`` with ``<video> <0|1|2>``.

    Id 2 marks test videos. Classes are sorted by name (label = position);
    relative paths are ``<class>/<video>`` (``video_ext`` replaces the
    extension, e.g. ".mp4" for re-encoded copies).
    """
    if not os.path.isdir(split_dir):
        raise ValueError(f"HMDB-51 split folder {split_dir!r} does not exist")
    pat = re.compile(r"^(.+)_test_split([123])\.txt$")
    classes = sorted({m.group(1) for f in os.listdir(split_dir) if (m := pat.match(f))})
    if not classes:
        raise ValueError(f"no '<class>_test_split<k>.txt' files in {split_dir!r}")
    out = []
    for s in splits:
        _check_split(s)
        items = []
        for label, cls in enumerate(classes):
            path = os.path.join(split_dir, f"{cls}_test_split{s}.txt")
            if not os.path.isfile(path):
                raise ValueError(f"HMDB-51 split file {path!r} does not exist")
            with open(path) as f:
                for ln, line in enumerate(f, 1):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                        raise ValueError(f"{path}, line {ln}: expected '<video> <0|1|2>', got {line.strip()!r}")
                    if parts[1] == "2":
                        v = parts[0] if video_ext is None else os.path.splitext(parts[0])[0] + video_ext
                        items.append((f"{cls}/{v}", label))
        out.append(items)
    return [c.replace("_", " ") for c in classes], out


def hmdb_ucf_splits(dataset: str, split_dir, **kw) -> tuple[list[str], list[list[tuple[str, int]]]]:
    """``("hmdb51" | "ucf101", split_dir)`` -> (class names, three test lists)."""
    d = dataset.lower().replace("-", "")
    if d in ("hmdb51", "hmdb"):
        return hmdb51_test_splits(split_dir, **kw)
    if d in ("ucf101", "ucf"):
        return ucf101_test_splits(split_dir, **kw)
    raise ValueError(f"dataset must be 'hmdb51' or 'ucf101', got {dataset!r}")


def split_camel(name: str) -> str:
    """"ApplyEyeMakeup" -> "apply eye makeup" (UCF-101 class names as text)."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).lower()


def summarise_splits(top1s: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of per-split accuracies (``mean ± std`` as in the paper's tables)."""
    x = np.asarray(list(top1s), dtype=np.float64)
    if x.size == 0:
        raise ValueError("summarise_splits: no splits")
    if x.size <= ddof:
        raise ValueError(f"summarise_splits: {x.size} value(s) is too few for ddof={ddof}")
    return float(x.mean()), float(x.std(ddof=ddof))
