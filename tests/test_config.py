"""The typed run config (xclip.config): defaults, YAML + overrides, aliases, one clear error per bad key/value."""

from __future__ import annotations

import dataclasses
import os
import warnings

import pytest
import yaml

from xclip.config import (ALIASES, DEFAULTS, ConfigError, DataConfig, EvalConfig, RunConfig, TrainConfig, dump_config,
                          load_config, to_config)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_defaults_are_typed_and_match_the_dict():
    cfg = load_config(None)
    assert isinstance(cfg, RunConfig) and isinstance(cfg.train, TrainConfig) and isinstance(cfg.eval, EvalConfig)
    assert cfg.train.amp == "bf16" and cfg.data.num_workers == 4 and cfg.eval.num_clips == 4
    assert cfg.to_dict() == DEFAULTS
    assert set(DEFAULTS) == {"seed", "output", "model", "data", "train", "eval", "log", "extra"}


def test_every_default_is_commented():
    """One set of defaults, each with its comment on the line that defines it."""
    src = open(os.path.join(REPO, "xclip", "config.py")).read().splitlines()
    from xclip.config import SECTIONS

    for section_cls in (RunConfig, *SECTIONS.values()):
        for f in dataclasses.fields(section_cls):
            if f.name in SECTIONS:
                continue
            line = next(ln for ln in src if ln.strip().startswith(f"{f.name}:"))
            assert "#" in line, f"{section_cls.__name__}.{f.name} has no comment: {line.strip()}"


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=3e-4", "train.epochs=3.0", "train.warmup_epochs=1", "data.mean=[0, 0, 0]",
                             "train.clip_grad=1"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.epochs, int) and cfg.train.epochs == 3
    assert isinstance(cfg.train.warmup_epochs, float) and isinstance(cfg.train.clip_grad, float)
    assert cfg.data.mean == [0, 0, 0]


def test_amp_spellings_normalised():
    assert load_config(None, ["train.amp=bfloat16"]).train.amp == "bf16"
    assert load_config(None, ["train.amp=false"]).train.amp == "none"
    assert load_config(None, ["train.amp=float16"]).train.amp == "fp16"


def test_old_section_name_is_an_alias_with_a_warning(tmp_path):
    assert ALIASES["test"] == "eval"
    f = tmp_path / "c.yaml"
    f.write_text("test:\n  num_clips: 2\n  num_crops: 1\n")
    with pytest.warns(DeprecationWarning, match="'test' is deprecated; use 'eval'"):
        cfg = load_config(str(f))
    assert cfg.eval.num_clips == 2 and cfg.eval.num_crops == 1
    with pytest.warns(DeprecationWarning, match="'test' is deprecated"):
        cfg = load_config(None, ["test.num_clips=5"])
    assert cfg.eval.num_clips == 5


def test_new_name_does_not_warn(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_config(None, ["eval.num_clips=5"]).eval.num_clips == 5


def test_old_checkpoint_dict_config_still_loads():
    """A checkpoint's ``train_config`` from before the typed config: a dict with a ``test`` section."""
    old = {"seed": 3, "output": "x", "model": {"arch": "ViT-B/32", "num_frames": 8}, "train": {"amp": "none"},
           "test": {"batch_size": None, "num_clips": 2, "num_crops": 3}, "log": {"progress": False}}
    with pytest.warns(DeprecationWarning):
        cfg = to_config(old)
    assert cfg.seed == 3 and cfg.eval.num_clips == 2 and cfg.train.amp == "none" and cfg.data.crop_pct == 0.875


def test_dump_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.lr=1e-5", "model.overrides.mit_layers=2", "data.augment={flip: 0.0}"])
    text = dump_config(cfg)
    assert yaml.safe_load(text) == cfg.to_dict()
    f = tmp_path / "dumped.yaml"
    f.write_text(text)
    assert load_config(str(f)) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.lr_rate=1", "unknown config key 'train.lr_rate'; did you mean"),
    ("trian.lr=1", "unknown config key 'trian'; did you mean 'train'"),
    ("train.batchsize=4", "did you mean 'batch_size'"),
    ("train=5", "'train' is a section; set one of its keys instead"),
    ("train.amp=fp8", "train.amp must be one of bf16, fp16, none; got 'fp8'"),
    ("train.device=tpu", "train.device must be auto, cpu, cuda; got 'tpu'"),
    ("train.fix_text=false", "did you mean"),
    ("model.fix_text=maybe", "model.fix_text must be a boolean (true or false), got 'maybe'"),
    ("train.clip_grad=big", "train.clip_grad must be a number or null, got 'big'"),
    ("data.text_template=a video of {1}", "data.text_template must contain '{}'"),
    ("data.text_template=a {} {1}", "cannot format a class name"),
    ("data.sampling=random", "data.sampling must be segment or dense"),
    ("data.decoder=ffmpeg", "data.decoder must be auto, torchcodec, pyav or decord"),
    ("data.decode_device=gpu", "data.decode_device must be cpu, cuda or cuda:N"),
    ("data.mean=[1, 2]", "data.mean must be null or three numbers"),
    ("eval.num_crops=2", "eval.num_crops must be 1 or 3"),
    ("train.betas=[0.9]", "train.betas must be two numbers in [0, 1)"),
    ("model.drop_path=1.5", "model.drop_path must be < 1"),
])
def test_bad_key_or_value_is_one_clear_line(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value), str(e.value)
    assert "\n" not in str(e.value)
    assert isinstance(e.value, ValueError)


def test_bad_yaml_names_the_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(str(f))
    f.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.epocs'; did you mean 'epochs'"):
        load_config(str(f))
    f.write_text("train: 5\n")
    with pytest.raises(ConfigError, match="config section 'train' must be a mapping"):
        load_config(str(f))


def test_free_form_sections_take_new_keys():
    cfg = load_config(None, ["model.overrides.mit_layers=2", "extra.note=hello", "data.augment.flip=0.0"])
    assert cfg.model.overrides == {"mit_layers": 2} and cfg.extra == {"note": "hello"}
    assert cfg.data.augment == {"flip": 0.0}


def test_replace_and_from_dict_validate():
    cfg = RunConfig.from_dict({"train": {"epochs": 2}})
    assert cfg.train.epochs == 2 and cfg.replace(["train.epochs=4"]).train.epochs == 4 and cfg.train.epochs == 2
    with pytest.raises(ConfigError, match="train.epochs must be >= 1"):
        cfg.replace(["train.epochs=0"])
    assert isinstance(DataConfig().crop_pct, float)


def test_every_key_is_in_the_api_page():
    """docs/api.md lists every config key with its default (the table is generated from xclip/config.py)."""
    from xclip.config import SECTIONS

    page = open(os.path.join(REPO, "docs", "api.md")).read()
    for f in dataclasses.fields(RunConfig):
        keys = [f.name] if f.name not in SECTIONS else [f"{f.name}.{g.name}" for g in dataclasses.fields(SECTIONS[f.name])]
        for key in keys:
            assert f"| `{key}` |" in page, f"docs/api.md does not list {key}"
    for old, new in ALIASES.items():
        assert f"`{old}`" in page and f"`{new}`" in page


def test_gpu_decoding_needs_torchcodec():
    with pytest.raises(ConfigError, match="data.decode_device=cuda .NVDEC. needs data.decoder torchcodec or auto"):
        load_config(None, ["data.decode_device=cuda", "data.decoder=pyav"])
    assert load_config(None, ["data.decode_device=cuda:1"]).data.decode_device == "cuda:1"
