"""Video transforms on uint8 tensors ``[T, 3, H, W]`` (torchvision v2).

Every random parameter is drawn once per call and applied to all ``T`` frames
(the video is wrapped as a ``tv_tensors.Video``), so a clip stays temporally
consistent. All transforms run on any device and on any leading batch shape
``[..., 3, H, W]`` (then one draw is shared by the whole batch).

Training (the X-CLIP recipe)::

    short side -> scale_size, multi-scale crop (scales 1, .875, .75, .66;
    aspect gap <= 1 step; 5 fixed positions) resized to input_size x input_size,
    horizontal flip (p 0.5), colour jitter 0.4/0.4/0.2/0.1 (p 0.8),
    grayscale (p 0.2), float in [0, 1], normalise (mean, std)

Testing::

    num_crops=1: short side -> scale_size, centre crop input_size
    num_crops=3: short side -> input_size, three crops along the long side
                 (start, centre, end), as the official three-crop test

``scale_size(input_size, crop_pct)`` is ``round(input_size / crop_pct)``: 256
for 224 at the default ``crop_pct`` 0.875 (= 224 / 256). ``crop_pct=1`` resizes
the short side straight to ``input_size`` (no margin is cut off at test time;
a clip already at ``input_size`` is left as it is). ``mean``/``std`` may be given in [0, 1] units (ImageNet's
0.485, 0.456, 0.406 / 0.229, 0.224, 0.225, the default) or in 0..255 units
(the official config's 123.675, ...); values above 1 are divided by 255.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_CROP_PCT", "scale_size", "MultiScaleCrop", "RandomGrayscale", "train_transform",
           "test_transform", "three_crop", "normalize", "as_unit_mean_std"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


DEFAULT_CROP_PCT = 0.875  # 224 / 256


def scale_size(input_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Short side before cropping, ``round(input_size / crop_pct)``: 256 for 224 at the default 0.875."""
    if input_size < 1:
        raise ValueError(f"input_size must be >= 1, got {input_size}")
    if not isinstance(crop_pct, (int, float)) or isinstance(crop_pct, bool) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
    return int(round(input_size / float(crop_pct)))


def as_unit_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean}, std={std}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    if max(mean) > 1.0 or max(std) > 1.0:
        mean, std = [m / 255.0 for m in mean], [s / 255.0 for s in std]
    return mean, std


class MultiScaleCrop(v2.Transform):
    """TSN-style multi-scale crop, then resize to ``size x size``.

    The crop's height and width are picked independently from
    ``scales * min(H, W)`` with their scale indices at most ``max_distort``
    apart (a side within 3 px of ``size`` snaps to ``size``); the crop sits at
    one of five fixed positions (four corners, centre), chosen at random.
    """

    def __init__(self, size: int, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66), max_distort: int = 1):
        super().__init__()
        if not scales or any(not 0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {scales}")
        self.size = int(size)
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from torchvision.transforms.v2._utils import query_size

        h, w = query_size(flat_inputs)
        base = min(h, w)
        sides = [int(base * s) for s in self.scales]
        sides = [self.size if abs(s - self.size) < 3 else s for s in sides]
        sides = [max(1, min(s, base)) for s in sides]
        pairs = [(sides[i], sides[j]) for i in range(len(sides)) for j in range(len(sides))
                 if abs(i - j) <= self.max_distort]
        ch, cw = pairs[int(torch.randint(len(pairs), ()).item())]
        ch, cw = min(ch, h), min(cw, w)
        dy, dx = h - ch, w - cw
        positions = [(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)]
        top, left = positions[int(torch.randint(len(positions), ()).item())]
        return dict(top=top, left=left, height=ch, width=cw)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.resized_crop, inpt, **params, size=[self.size, self.size], antialias=True)


class RandomGrayscale(v2.Transform):
    """Grayscale (kept as 3 channels) with probability ``p``.

    torchvision's ``v2.RandomGrayscale`` passes ``tv_tensors.Video`` through
    unchanged (no video kernel for ``rgb_to_grayscale`` in torchvision 0.29), so
    the video pipeline uses this one, which applies the same functional op to the
    video's frames.
    """

    def __init__(self, p: float = 0.1):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomGrayscale: p must be in [0, 1], got {p}")
        self.p = float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return dict(apply=bool(torch.rand(()) < self.p))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or not isinstance(inpt, torch.Tensor):
            return inpt
        out = F.rgb_to_grayscale(inpt.as_subclass(torch.Tensor), num_output_channels=3)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out


def normalize(mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> v2.Transform:
    """uint8 -> float32 in [0, 1] -> (x - mean) / std."""
    m, s = as_unit_mean_std(mean, std)
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=m, std=s)])


def train_transform(input_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD, *, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
                    flip: float = 0.5, jitter: float = 0.8, grayscale: float = 0.2,
                    normalise: bool = True, crop_pct: float = DEFAULT_CROP_PCT) -> v2.Transform:
    """The training augmentation; call on uint8 ``[T, 3, H, W]``, returns float ``[T, 3, S, S]``.

    The short side is first resized to ``scale_size(input_size, crop_pct)``.

    ``normalise=False`` returns uint8 (for inspection and tests).
    """
    m, s = as_unit_mean_std(mean, std)
    ops: list[v2.Transform] = [
        v2.Resize(scale_size(input_size, crop_pct), antialias=True),
        MultiScaleCrop(input_size, scales),
        v2.RandomHorizontalFlip(flip),
        # colour ops in float32: 3-100x faster than torchvision's uint8 paths (which convert per op)
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=jitter),
        RandomGrayscale(grayscale),
    ]
    ops.append(v2.Normalize(mean=m, std=s) if normalise else v2.ToDtype(torch.uint8, scale=True))
    return _VideoCompose(ops)


def three_crop(video: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Three ``size x size`` crops along the longer side: start, centre, end."""
    h, w = video.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"three_crop: frame {h}x{w} is smaller than the crop {size}")
    if w >= h:
        tops, lefts = [(h - size) // 2] * 3, [0, (w - size) // 2, w - size]
    else:
        tops, lefts = [0, (h - size) // 2, h - size], [(w - size) // 2] * 3
    return [video[..., t:t + size, l:l + size] for t, l in zip(tops, lefts)]


class _VideoCompose(v2.Compose):
    """Compose that treats a plain tensor as a ``tv_tensors.Video`` and returns a plain tensor."""

    def forward(self, *inputs: Any) -> Any:
        x = inputs[0] if len(inputs) == 1 else inputs
        if isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor):
            if x.ndim < 4 or x.shape[-3] != 3:
                raise ValueError(f"video transform expects [..., T, 3, H, W], got shape {tuple(x.shape)}")
            out = super().forward(tv_tensors.Video(x))
            return out.as_subclass(torch.Tensor)
        return super().forward(x)


class _TestTransform:
    """Deterministic test transform returning a list of crops (views)."""

    def __init__(self, input_size: int, num_crops: int, mean, std, normalise: bool, crop_pct: float = DEFAULT_CROP_PCT):
        if num_crops not in (1, 3):
            raise ValueError(f"num_crops must be 1 or 3, got {num_crops}")
        self.input_size, self.num_crops = int(input_size), num_crops
        short = scale_size(input_size, crop_pct) if num_crops == 1 else input_size
        self.resize = v2.Resize(short, antialias=True)
        self.norm = normalize(mean, std) if normalise else None

    def __call__(self, video: torch.Tensor) -> list[torch.Tensor]:
        if video.ndim < 4 or video.shape[-3] != 3:
            raise ValueError(f"video transform expects [..., T, 3, H, W], got shape {tuple(video.shape)}")
        x = self.resize(tv_tensors.Video(video)).as_subclass(torch.Tensor)
        if self.num_crops == 1:
            crops = [F.center_crop(x, [self.input_size, self.input_size])]
        else:
            crops = three_crop(x, self.input_size)
        if self.norm is not None:
            crops = [self.norm(tv_tensors.Video(c.contiguous())).as_subclass(torch.Tensor) for c in crops]
        return crops

    def __repr__(self) -> str:
        return f"TestTransform(input_size={self.input_size}, num_crops={self.num_crops}, resize={self.resize})"


def test_transform(input_size: int = 224, num_crops: int = 1, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, *, normalise: bool = True,
                   crop_pct: float = DEFAULT_CROP_PCT) -> _TestTransform:
    """The test transform: ``f(uint8 [T, 3, H, W]) -> [num_crops x float [T, 3, S, S]]``.

    One crop: short side to ``scale_size(input_size, crop_pct)``, centre crop. Three crops
    (the official test) resize the short side to ``input_size`` whatever ``crop_pct``.
    """
    return _TestTransform(input_size, num_crops, mean, std, normalise, crop_pct)


test_transform.__test__ = False  # not a pytest test when imported into a test module
