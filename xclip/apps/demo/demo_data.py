"""Synthetic "moving shapes" videos for ``xclip demo``: real mp4 files, official lists.

Each clip shows one coloured shape gliding across a noisy dark background.
Its class is colour x shape x motion, named in words ("red circle moving
left"). A few classes are held out of training entirely (novel combinations
of words seen in other classes) for zero-shot evaluation by text alone.

Nothing is downloaded; everything is drawn with numpy and encoded with
:func:`xclip.data.write_video`. Output layout under ``root``::

    videos/<class_slug>/<split>_<k>.mp4
    labels_train.csv      id,name for the trained classes (ids 0..K-1)
    labels_zeroshot.csv   id,name for the held-out classes
    labels_all.csv        every class (trained first, then held out)
    train.txt val.txt test.txt   official lists over the trained classes
    zeroshot.txt          clips of the held-out classes (labels from labels_zeroshot.csv)
    dataset.json          what was generated, with the seed
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["ShapesSpec", "class_names", "choose_held_out", "render_clip", "generate_dataset"]

COLOURS = {
    "red": (225, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "magenta": (220, 50, 220),
    "cyan": (40, 210, 220),
}
SHAPES = ("circle", "square", "triangle", "cross")
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass
class ShapesSpec:
    colours: list[str] = field(default_factory=lambda: ["red", "green", "blue"])
    shapes: list[str] = field(default_factory=lambda: ["circle", "square", "triangle"])
    motions: list[str] = field(default_factory=lambda: ["left", "right", "up", "down"])
    num_held_out: int = 6
    size: int = 32            # frame height = width (even, for yuv420p)
    frames: int = 16          # frames per clip
    fps: int = 8
    radius: tuple[float, float] = (0.18, 0.24)   # shape radius, fraction of the frame side (drawn per clip)
    travel: tuple[float, float] = (0.4, 0.6)     # path length, fraction of the frame side (drawn per clip)
    noise: float = 4.0        # std of the per-pixel background noise (0..255 units)
    train_per_class: int = 48
    val_per_class: int = 4
    test_per_class: int = 10
    zeroshot_per_class: int = 16
    held_out_pairs: bool = False  # hold out one object moving in two opposite directions, so zero-shot needs motion
    seed: int = 0
    # x264 quality: 0 is lossless, so the decoded pixels are the rendered ones (after 4:2:0 chroma) on every
    # machine. A lossy encode (crf 18) is not repeatable: under load the same frames encoded twice gave up to
    # 22 different files (measured: 282 of the 1,956 clips differed between two generations, pixels by up to
    # 38), which made two demo runs differ. Lossless clips are ~3x larger (13 KB each).
    crf: int = 0

    def validate(self) -> None:
        for name, vals, known in (("colours", self.colours, COLOURS), ("shapes", self.shapes, SHAPES),
                                  ("motions", self.motions, MOTIONS)):
            bad = [v for v in vals if v not in known]
            if bad or not vals or len(set(vals)) != len(vals):
                raise ValueError(f"{name}: expected distinct values from {list(known)}, got {vals}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        for name, lo_hi, top in (("radius", self.radius, 0.4), ("travel", self.travel, 1.0)):
            ok = isinstance(lo_hi, (tuple, list)) and len(lo_hi) == 2 and 0 < float(lo_hi[0]) <= float(lo_hi[1]) <= top
            if not ok:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high <= {top}, got {lo_hi!r}")
        if not 0 <= int(self.crf) <= 51:
            raise ValueError(f"crf must be in [0, 51] (0 = lossless), got {self.crf}")
        if not 0 <= self.noise <= 100:
            raise ValueError(f"noise must be in [0, 100], got {self.noise}")
        n = len(self.colours) * len(self.shapes) * len(self.motions)
        if not 0 <= self.num_held_out <= n - 2:
            raise ValueError(f"num_held_out must be in [0, {n - 2}] for {n} classes, got {self.num_held_out}")
        for k in ("train_per_class", "val_per_class", "test_per_class", "zeroshot_per_class"):
            if getattr(self, k) < (1 if k == "train_per_class" else 0):
                raise ValueError(f"{k} must be >= {1 if k == 'train_per_class' else 0}, got {getattr(self, k)}")


Combo = tuple[str, str, str]


def class_names(spec: ShapesSpec) -> list[Combo]:
    return list(itertools.product(spec.colours, spec.shapes, spec.motions))


def name_of(c: Combo) -> str:
    return f"{c[0]} {c[1]} moving {c[2]}"


def choose_held_out(spec: ShapesSpec) -> list[Combo]:
    """Held-out classes whose every word pair (colour-shape, colour-motion,
    shape-motion) still occurs in some trained class, spread so that no word
    is held out much more often than another.

    With ``spec.held_out_pairs`` (and opposite motions in the spec) they come
    in pairs: one object (colour and shape) moving in two opposite
    directions, so that telling the held-out classes apart needs the
    direction of motion, not only colour and shape.
    """
    rng = np.random.default_rng(spec.seed + 17)
    combos = class_names(spec)
    limits = [math.ceil(spec.num_held_out / len(v)) for v in (spec.colours, spec.shapes, spec.motions)]

    def acceptable(trial: list[Combo]) -> bool:
        for i in range(3):
            words = [h[i] for h in trial]
            if any(words.count(w) > limits[i] for w in set(words)):
                return False
        train = [x for x in combos if x not in trial]
        return all(any(x[i] == h[i] and x[j] == h[j] for x in train) for h in trial for i, j in ((0, 1), (0, 2), (1, 2)))

    held: list[Combo] = []
    axes = [(a, b) for a, b in (("left", "right"), ("up", "down")) if a in spec.motions and b in spec.motions]
    if spec.held_out_pairs and axes and spec.num_held_out >= 2:
        objects = list(itertools.product(spec.colours, spec.shapes))
        for k in rng.permutation(len(objects)):
            if spec.num_held_out - len(held) < 2:
                break
            colour, shape = objects[k]
            for a in rng.permutation(len(axes)):
                pair = [(colour, shape, m) for m in axes[a]]
                if acceptable(held + pair):
                    held += pair
                    break
    for i in rng.permutation(len(combos)):  # the rest (or all, without opposite motions) one class at a time
        if len(held) == spec.num_held_out:
            break
        c = combos[i]
        if c not in held and acceptable(held + [c]):
            held.append(c)
    if len(held) < spec.num_held_out:
        raise ValueError(f"could not hold out {spec.num_held_out} classes with every word pair still trained; "
                         "use fewer held-out classes or more colours/shapes/motions")
    return held


def _shape_mask(shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return (dy * dy + dx * dx) <= r * r
    if shape == "square":
        s = r * 0.85
        return (np.abs(dy) <= s) & (np.abs(dx) <= s)
    if shape == "triangle":  # pointing up, apex at cy - r, base at cy + 0.8 r
        top, bottom = cy - r, cy + 0.8 * r
        half_w = (yy - top) / (bottom - top) * r
        return (yy >= top) & (yy <= bottom) & (np.abs(dx) <= half_w)
    if shape == "cross":
        t = r * 0.35
        return ((np.abs(dy) <= t) & (np.abs(dx) <= r)) | ((np.abs(dx) <= t) & (np.abs(dy) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def render_clip(colour: str, shape: str, motion: str, *, size: int = 32, frames: int = 16,
                rng: np.random.Generator, radius: tuple[float, float] = (0.13, 0.19),
                travel: tuple[float, float] = (0.45, 0.7), noise: float = 6.0) -> np.ndarray:
    """uint8 ``[frames, size, size, 3]``: the shape moves at constant speed in ``motion``'s direction.

    Radius and path length are drawn per clip (fractions of ``size``); the
    whole path stays inside the frame (a path longer than the room left by
    the shape is shortened to fit).
    """
    if colour not in COLOURS or shape not in SHAPES or motion not in MOTIONS:
        raise ValueError(f"unknown class ({colour!r}, {shape!r}, {motion!r})")
    r = rng.uniform(*radius) * size
    margin = r + 1
    path = min(rng.uniform(*travel) * size, max(0.0, size - 2 * margin))
    speed = path / (frames - 1)
    travel = speed * (frames - 1)
    ux, uy = MOTIONS[motion]
    # start so that the whole path stays inside the frame
    lo_x, hi_x = (margin + max(0.0, -ux) * travel, size - margin - max(0.0, ux) * travel)
    lo_y, hi_y = (margin + max(0.0, -uy) * travel, size - margin - max(0.0, uy) * travel)
    x0 = rng.uniform(lo_x, max(lo_x, hi_x))
    y0 = rng.uniform(lo_y, max(lo_y, hi_y))
    base = np.array(COLOURS[colour], dtype=np.float32) * rng.uniform(0.85, 1.0)
    bg = rng.uniform(15, 60, size=3).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        cx, cy = x0 + ux * speed * t, y0 + uy * speed * t
        img = np.broadcast_to(bg, (size, size, 3)).copy()
        if noise > 0:
            img += rng.normal(0, noise, size=(size, size, 3)).astype(np.float32)
        img[_shape_mask(shape, yy, xx, cy, cx, r)] = base
        out[t] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _slug(c: Combo) -> str:
    return f"{c[0]}_{c[1]}_{c[2]}"


def _write_labels(path: str, names: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,name\n")
        for i, n in enumerate(names):
            f.write(f"{i},{n}\n")


def _render_and_write(args) -> None:
    from xclip.data import write_video

    root, spec_d, split_id, combo_index, c, k, rel = args
    rng = np.random.default_rng([spec_d["seed"], split_id, combo_index, k])
    frames = render_clip(*c, size=spec_d["size"], frames=spec_d["frames"], rng=rng, radius=tuple(spec_d["radius"]),
                         travel=tuple(spec_d["travel"]), noise=spec_d["noise"])
    write_video(os.path.join(root, rel), frames, fps=spec_d["fps"], crf=spec_d["crf"])


def generate_dataset(root: str, spec: ShapesSpec | None = None, *, progress: bool = False, workers: int = 1) -> dict:
    """Write the data set under ``root``; returns a dict describing it (also saved as dataset.json).

    An existing data set generated from the same spec is reused as is.
    ``workers > 1`` encodes in that many processes (same files either way).
    """
    spec = spec or ShapesSpec()
    spec.validate()
    os.makedirs(root, exist_ok=True)
    meta = os.path.join(root, "dataset.json")
    if os.path.isfile(meta):
        try:
            with open(meta) as f:
                old = json.load(f)
            if old.get("spec") == json.loads(json.dumps(asdict(spec))) and old.get("complete"):
                return old
        except (OSError, ValueError):
            pass
        os.unlink(meta)
    combos = class_names(spec)
    held = choose_held_out(spec)
    trained = [c for c in combos if c not in held]
    train_names = [name_of(c) for c in trained]
    held_names = [name_of(c) for c in held]
    _write_labels(os.path.join(root, "labels_train.csv"), train_names)
    _write_labels(os.path.join(root, "labels_zeroshot.csv"), held_names)
    _write_labels(os.path.join(root, "labels_all.csv"), train_names + held_names)

    jobs = []  # (list name, class combo, label, k)
    for label, c in enumerate(trained):
        for split, n in (("train", spec.train_per_class), ("val", spec.val_per_class), ("test", spec.test_per_class)):
            jobs += [(split, c, label, k) for k in range(n)]
    for label, c in enumerate(held):
        jobs += [("zeroshot", c, label, k) for k in range(spec.zeroshot_per_class)]

    lists: dict[str, list[str]] = {"train": [], "val": [], "test": [], "zeroshot": []}
    split_ids = {"train": 0, "val": 1, "test": 2, "zeroshot": 3}
    spec_d = asdict(spec)
    tasks = []
    for split, c, label, k in jobs:
        rel = f"videos/{_slug(c)}/{split}_{k:03d}.mp4"
        lists[split].append(f"{rel} {label}")
        # one independent random stream per clip: the files do not depend on the order of generation
        tasks.append((root, spec_d, split_ids[split], combos.index(c), c, k, rel))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc="generating videos", leave=False, dynamic_ncols=True)
    if workers > 1 and len(tasks) > 50:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            for _ in ex.map(_render_and_write, tasks, chunksize=32):
                if bar is not None:
                    bar.update(1)
    else:
        for t in tasks:
            _render_and_write(t)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    for split, lines in lists.items():
        with open(os.path.join(root, f"{split}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + ("\n" if lines else ""))
    info = {"spec": asdict(spec), "trained_classes": train_names, "held_out_classes": held_names,
            "counts": {k: len(v) for k, v in lists.items()}, "complete": True}
    with open(os.path.join(root, "dataset.json"), "w") as f:
        json.dump(info, f, indent=2)
    return info
