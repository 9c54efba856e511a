"""The one dataset / loader builder (xclip.data.build): every data key is read there, the same way for all callers."""

from __future__ import annotations

import pytest

from xclip.config import ConfigError, DataConfig, load_config
from xclip.data import IMAGENET_MEAN, build_data_loader, build_dataset

ITEMS = [("a.mp4", 0), ("b.mp4", 1), ("c.mp4", 0)]


def _ds(data, **kw):
    kw.setdefault("mode", "test")
    return build_dataset(data, ITEMS, num_frames=4, root="/videos", check_files=False, **kw)


def test_builder_reads_every_data_key():
    data = load_config(None, ["data.sampling=dense", "data.crop_pct=1.0", "data.mean=[0, 0, 0]", "data.std=[1, 1, 1]",
                              "data.decoder=pyav", "data.input_size=32"]).data
    ds = _ds(data, num_clips=2, num_crops=3, seed=5)
    assert ds.sampling == "dense" and ds.crop_pct == 1.0 and ds.mean == (0, 0, 0) and ds.std == (1, 1, 1)
    assert ds.input_size == 32 and ds.num_clips == 2 and ds.num_crops == 3 and ds.seed == 5
    assert ds.samples[0][0] == "/videos/a.mp4"
    # evaluation passes the model's resolution instead of data.input_size
    assert _ds(data, input_size=64).input_size == 64


def test_builder_defaults_are_the_config_defaults():
    ds = _ds(DataConfig())
    assert ds.sampling == "segment" and ds.crop_pct == 0.875 and ds.mean == tuple(IMAGENET_MEAN)


def test_augment_replaces_the_training_transform_and_bad_options_name_the_key():
    data = load_config(None, ["data.augment={flip: 0.0, jitter: 0.0, grayscale: 0.0, scales: [1.0]}"]).data
    default = _ds(DataConfig(), mode="train").transform
    custom = _ds(data, mode="train").transform
    assert repr(custom) != repr(default)
    assert repr(_ds(data, mode="test").transform) == repr(_ds(DataConfig(), mode="test").transform)  # train only
    bad = load_config(None, ["data.augment={flipp: 0.5}"]).data
    with pytest.raises(ConfigError, match="data.augment"):
        _ds(bad, mode="train")


def test_loader_uses_data_num_workers_unless_told():
    ds = _ds(DataConfig(num_workers=0))
    assert build_data_loader(DataConfig(num_workers=0), ds, 2, train=False, distributed=False).num_workers == 0
    assert build_data_loader(DataConfig(num_workers=0), ds, 2, train=False, distributed=False,
                             num_workers=1).num_workers == 1
