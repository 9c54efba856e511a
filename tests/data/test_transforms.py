"""Video transforms: shapes, value ranges, temporal consistency, crop geometry."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as F

from xclip.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, MultiScaleCrop, as_unit_mean_std, scale_size,
                                   test_transform, three_crop, train_transform)


def _video(t=4, h=48, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, 3, h, w), generator=g, dtype=torch.uint8)


def _bounds(mean=IMAGENET_MEAN, std=IMAGENET_STD):
    lo = torch.tensor([(0 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    hi = torch.tensor([(1 - m) / s for m, s in zip(mean, std)]).view(1, 3, 1, 1)
    return lo, hi


def test_scale_size():
    assert scale_size(224) == 256 and scale_size(336) == 384 and scale_size(32) == 37
    with pytest.raises(ValueError, match="input_size"):
        scale_size(0)
    assert scale_size(224, 1.0) == 224 and scale_size(32, 1.0) == 32 and scale_size(224, 0.9) == 249
    for bad in (0, 1.5, -0.5, "0.9", True):
        with pytest.raises(ValueError, match="crop_pct must be a number in"):
            scale_size(224, bad)


def test_crop_pct_one_leaves_a_clip_at_input_size_untouched():
    x = _video(h=32, w=32)
    tr = train_transform(32, scales=(1.0,), flip=0.0, jitter=0.0, grayscale=0.0, normalise=False, crop_pct=1.0)
    te = test_transform(32, normalise=False, crop_pct=1.0)
    assert torch.equal(tr(x), x) and torch.equal(te(x)[0], x)
    # the default resizes 32 -> 37 and crops back to 32: the test view is a zoomed centre
    zoomed = test_transform(32, normalise=False)(x)[0]
    assert zoomed.shape == x.shape and not torch.equal(zoomed, x)
    # a wider clip: short side straight to 32, centre 32 columns
    wide = _video(h=32, w=48)
    assert torch.equal(test_transform(32, normalise=False, crop_pct=1.0)(wide)[0], wide[..., 8:40])


def test_mean_std_units():
    assert as_unit_mean_std((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))[0] == pytest.approx(IMAGENET_MEAN)
    with pytest.raises(ValueError, match="3 values"):
        as_unit_mean_std((0.5, 0.5), (1, 1))
    with pytest.raises(ValueError, match="positive"):
        as_unit_mean_std((0.5,) * 3, (1, 0, 1))


@pytest.mark.parametrize("size", [32, 40])
def test_train_transform_shapes_and_range(size):
    torch.manual_seed(0)
    for seed in range(6):
        v = _video(seed=seed)
        out = train_transform(size)(v)
        assert out.shape == (4, 3, size, size) and out.dtype == torch.float32
        lo, hi = _bounds()
        assert torch.isfinite(out).all()
        assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
        raw = train_transform(size, normalise=False)(v)
        assert raw.dtype == torch.uint8 and raw.shape == (4, 3, size, size)


def test_train_transform_same_draw_for_every_frame():
    frame = _video(t=1, seed=1)
    v = frame.expand(6, -1, -1, -1).contiguous()
    for seed in range(10):
        torch.manual_seed(seed)
        out = train_transform(32)(v)
        assert all(torch.equal(out[0], out[t]) for t in range(6))


def test_custom_mean_std_applied():
    v = torch.full((2, 3, 40, 40), 255, dtype=torch.uint8)
    out = test_transform(32, 1, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))(v)[0]
    assert torch.allclose(out, torch.full_like(out, 2.0))


def test_multiscale_crop_sizes_and_positions():
    x = torch.arange(100 * 80, dtype=torch.float32).view(1, 1, 100, 80).expand(1, 3, 100, 80)
    base = 80
    allowed = {int(base * s) for s in (1, 0.875, 0.75, 0.66)}
    crop = MultiScaleCrop(size=16)
    seen = set()
    torch.manual_seed(0)
    for _ in range(300):
        p = crop.make_params([x])
        assert p["height"] in allowed and p["width"] in allowed
        dy, dx = 100 - p["height"], 80 - p["width"]
        assert (p["top"], p["left"]) in {(0, 0), (0, dx), (dy, 0), (dy, dx), (dy // 2, dx // 2)}
        order = sorted(allowed, reverse=True)
        assert abs(order.index(p["height"]) - order.index(p["width"])) <= 1
        seen.add((p["height"], p["width"]))
    assert len(seen) == 10  # 4 squares + 2*3 neighbouring aspect pairs
    out = crop(torch.zeros(2, 3, 100, 80, dtype=torch.uint8))
    assert out.shape == (2, 3, 16, 16)


def test_test_transform_center_and_three_crops():
    h, w = 48, 64
    x = torch.arange(w, dtype=torch.uint8).view(1, 1, 1, w).expand(2, 3, h, w).contiguous()
    c1 = test_transform(32, 1, normalise=False)(x)
    assert len(c1) == 1 and c1[0].shape == (2, 3, 32, 32)
    s = scale_size(32)  # short side 37 -> 37 x 49; centre crop keeps the middle columns
    resized = F.resize(x, s, antialias=True)
    assert torch.equal(c1[0], F.center_crop(resized, [32, 32]))
    c3 = test_transform(32, 3, normalise=False)(x)
    assert len(c3) == 3 and all(c.shape == (2, 3, 32, 32) for c in c3)
    r3 = F.resize(x, 32, antialias=True)  # short side = input size for three crops
    W = r3.shape[-1]
    assert torch.equal(c3[0], r3[..., :32]) and torch.equal(c3[2], r3[..., W - 32:])
    assert torch.equal(c3[1], r3[..., (W - 32) // 2:(W - 32) // 2 + 32])
    assert torch.equal(test_transform(32, 3)(x)[1], test_transform(32, 3)(x)[1])  # deterministic


def test_three_crop_portrait_and_errors():
    v = torch.zeros(1, 3, 50, 20)
    crops = three_crop(v, 20)
    assert [tuple(c.shape[-2:]) for c in crops] == [(20, 20)] * 3
    with pytest.raises(ValueError, match="smaller than the crop"):
        three_crop(v, 30)
    with pytest.raises(ValueError, match="num_crops"):
        test_transform(32, 2)
    with pytest.raises(ValueError, match="T, 3, H, W"):
        train_transform(32)(torch.zeros(4, 1, 40, 40, dtype=torch.uint8))


def test_flip_and_grayscale_probabilities_are_configurable():
    v = _video(t=2, seed=4)
    t = train_transform(32, flip=1.0, jitter=0.0, grayscale=1.0, normalise=False)
    torch.manual_seed(0)
    out = t(v)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # grayscale
    assert not torch.equal(v[:, 0], v[:, 1])
    # flipped: compare with the same pipeline without the flip (same draws otherwise)
    torch.manual_seed(0)
    ref = train_transform(32, flip=0.0, jitter=0.0, grayscale=1.0, normalise=False)(v)
    assert torch.equal(out, F.horizontal_flip(ref))
    counts = 0
    for seed in range(200):
        torch.manual_seed(seed)
        o = train_transform(32, flip=0.0, jitter=0.0, grayscale=0.2, normalise=False)(v)
        counts += int(torch.equal(o[:, 0], o[:, 1]))
    assert 20 <= counts <= 65  # ~ 40 expected for p = 0.2
