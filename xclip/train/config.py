"""Training configuration: defaults, YAML files and dotted ``key=value`` overrides.

A config is a plain nested ``dict``. :func:`load_config` merges, in order,
the defaults below, the YAML file (and any files it names under ``base:``,
relative to itself) and the command-line overrides, then validates the
result. Overrides use dotted keys (``train.lr=1e-5``); values are parsed as
YAML scalars/lists (``true``, ``null``, ``3``, ``1e-5``, ``[1, 2]``), with
``1e-5``-style floats recognised (plain YAML 1.1 would read them as strings).
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any, Iterable, Mapping

import yaml

__all__ = ["DEFAULTS", "load_config", "parse_overrides", "apply_override", "merge", "validate", "dump_config"]

# Defaults mirror the official X-CLIP recipe (microsoft/VideoX, X-CLIP/utils/config.py).
DEFAULTS: dict[str, Any] = {
    "seed": 1024,
    "output": "runs/xclip",
    "model": {
        "arch": "ViT-B/32",          # or a dict of XCLIPConfig fields
        "pretrained": None,          # CLIP / official / HF weights, or one of our checkpoints
        "num_frames": 8,
        "drop_path": 0.0,
        "fix_text": True,            # frozen, cached text encoder (official FIX_TEXT)
        "grad_checkpointing": False,
        "overrides": {},             # extra XCLIPConfig fields for create_model
    },
    "data": {
        "root": "",
        "train_list": "",
        "val_list": "",
        "test_list": None,           # default: val_list
        "labels": "",                # labels CSV (id,name)
        "num_classes": None,         # checked against the labels file when given
        "input_size": 224,
        "num_workers": 4,
        "decoder": "auto",
        "sampling": "segment",
        "crop_pct": 0.875,           # short side resized to input_size / crop_pct before cropping (256 for 224);
                                     # 1.0: straight to input_size (clips already at input_size stay untouched)
        "mean": None,                # None: the data module's default (CLIP)
        "std": None,
        "text_template": "{}",       # class name -> prompt text
        "augment": None,             # None: the data module's training augmentation; or a dict of
                                     # xclip.data.train_transform options (flip, jitter, grayscale, scales)
        "cache_frames": False,       # decode each video once and keep its frames in memory (small data sets)
    },
    "train": {
        "epochs": 30,
        "warmup_epochs": 5,
        "lr": 8.0e-6,                # CLIP parts; new modules get lr * new_module_lr_mult
        "new_module_lr_mult": 10.0,
        "text_lr_mult": 1.0,         # text tower (training it, fix_text=false) at lr * text_lr_mult
        "text_freeze_epochs": 0,     # fix_text=false: hold the text tower still (lr 0) for this many epochs, then
                                     # warm it up over warmup_epochs; 0 = train it from the first step
        "min_lr_ratio": 0.01,        # cosine floor at lr / 100
        "warmup_init_lr": 0.0,
        "weight_decay": 0.001,
        "betas": [0.9, 0.98],
        "eps": 1.0e-8,
        "fused_optimizer": "auto",   # fused AdamW kernel where supported (auto | true | false)
        "batch_size": 8,             # per process
        "accumulation_steps": 1,
        "clip_grad": None,           # max global grad norm, None = off
        "amp": "bf16",               # bf16 | fp16 | none (fp16 uses a GradScaler)
        "label_smoothing": 0.1,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_switch_prob": 0.5,
        "resume": None,              # None | "auto" | path
        "save_every_steps": 0,       # extra mid-epoch checkpoints (0 = off)
        "keep_step_checkpoints": 1,
        "keep_epoch_checkpoints": None,  # None: keep every epoch-end checkpoint; N: only the N newest
        "max_steps": None,           # stop after this many optimiser steps (debugging, tests)
        "deterministic": False,
        "eval_every": 1,             # epochs; 0 = no per-epoch evaluation
        "final_test": True,
        "device": "auto",            # auto | cpu | cuda
        "num_threads": None,         # torch intra-op CPU threads per process (None: torch's default)
        "find_unused_parameters": False,  # DDP option, for models with unused trainable parameters
        "debug_step_delay": 0.0,     # seconds to sleep after each step (tests kill a run mid-epoch)
    },
    "test": {
        "batch_size": None,          # default: train.batch_size
        "num_clips": 4,              # final multi-view test
        "num_crops": 3,
    },
    "log": {
        "print_every": 50,
        "tensorboard": True,
        "progress": True,
    },
}

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


def parse_value(text: str) -> Any:
    """Parse an override value as YAML, with ``1e-5`` read as a float."""
    s = text.strip()
    if _FLOAT_RE.match(s):
        return float(s)
    try:
        value = yaml.safe_load(s) if s else ""
    except yaml.YAMLError:
        return s
    return _fix_floats(value)


def _fix_floats(obj: Any) -> Any:
    if isinstance(obj, str) and _FLOAT_RE.match(obj.strip()):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _fix_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_floats(v) for v in obj]
    return obj


def parse_overrides(items: Iterable[str]) -> list[tuple[list[str], Any]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key=value (e.g. train.lr=1e-5)")
        key, _, value = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ValueError(f"override {item!r}: empty key or key part")
        out.append((key.split("."), parse_value(value)))
    return out


def apply_override(cfg: dict, path: list[str], value: Any, *, strict: bool = True) -> None:
    """Set ``cfg[path[0]][path[1]]... = value``.

    With ``strict`` a key unknown to the config raises ValueError (catches
    typos such as ``train.lr_rate``); children of free-form dicts
    (``model.overrides``, or a dict ``model.arch``) may be new.
    """
    node = cfg
    for i, part in enumerate(path[:-1]):
        if part not in node or node[part] is None:
            if strict and not _free_form(path[: i + 1]):
                raise ValueError(f"unknown config key {'.'.join(path)!r} ({part!r} is not a section)")
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ValueError(f"config key {'.'.join(path[: i + 1])!r} is a value, not a section; cannot set {'.'.join(path)!r}")
        node = node[part]
    last = path[-1]
    if strict and last not in node and not _free_form(path[:-1]):
        raise ValueError(f"unknown config key {'.'.join(path)!r}; known keys here: {sorted(node)}")
    node[last] = value


def _free_form(prefix: list[str]) -> bool:
    return prefix[:2] in (["model", "overrides"], ["model", "arch"], ["data", "augment"]) or prefix[:1] == ["extra"]


def merge(base: dict, update: Mapping, *, strict: bool = True, _prefix: str = "") -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        where = f"{_prefix}{key}"
        if strict and key not in out and not _free_form(where.split(".")[:-1]) and key != "base":
            raise ValueError(f"unknown config key {where!r}; known keys: {sorted(out)}")
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and where not in ("model.arch", "data.augment"):
            out[key] = merge(out[key], value, strict=strict, _prefix=where + ".")
        else:
            out[key] = copy.deepcopy(_fix_floats(value))
    return out


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ValueError(f"config {path}: circular base: chain {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("base", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: dict = {}
    for b in bases:
        bpath = b if os.path.isabs(b) else os.path.join(os.path.dirname(path), b)
        merged = _deep_update(merged, _read_yaml(bpath, seen + (path,)))
    return _deep_update(merged, data)


def _deep_update(a: dict, b: Mapping) -> dict:
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_config(path: str | None, overrides: Iterable[str] = (), *, defaults: Mapping | None = None, strict: bool = True) -> dict:
    """Defaults <- YAML file (with ``base:`` includes) <- ``key=value`` overrides.

    Unknown keys raise ValueError (``strict``), so a typo never silently
    does nothing. Returns a validated nested dict.
    """
    cfg = copy.deepcopy(dict(defaults) if defaults is not None else DEFAULTS)
    if path:
        cfg = merge(cfg, _read_yaml(path), strict=strict)
    for keys, value in parse_overrides(overrides):
        apply_override(cfg, keys, value, strict=strict)
    validate(cfg)
    return cfg


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def validate(cfg: dict) -> dict:
    """Raise ValueError naming the first bad setting."""
    t, m, d = cfg.get("train", {}), cfg.get("model", {}), cfg.get("data", {})

    def num(section: dict, key: str, where: str, lo: float | None = None, integer: bool = False, allow_none: bool = False):
        v = section.get(key)
        if v is None and allow_none:
            return
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if integer:
            ok = ok and float(v).is_integer()
        _check(ok, f"{where}.{key} must be a {'integer' if integer else 'number'}, got {v!r}")
        if lo is not None:
            _check(v >= lo, f"{where}.{key} must be >= {lo}, got {v!r}")

    if t:
        num(t, "epochs", "train", 1, integer=True)
        num(t, "warmup_epochs", "train", 0)
        num(t, "lr", "train", 0)
        num(t, "new_module_lr_mult", "train", 0)
        num(t, "text_lr_mult", "train", 0)
        num(t, "text_freeze_epochs", "train", 0)
        if float(t.get("text_freeze_epochs") or 0) > 0:
            _check(not m.get("fix_text", True),
                   f"train.text_freeze_epochs={t.get('text_freeze_epochs')!r} needs model.fix_text=false "
                   "(with fix_text the text tower is frozen for the whole run)")
            _check(float(t["text_freeze_epochs"]) < float(t.get("epochs", 1)),
                   f"train.text_freeze_epochs must be < train.epochs={t.get('epochs')!r}, got {t['text_freeze_epochs']!r}")
        num(t, "min_lr_ratio", "train", 0)
        num(t, "weight_decay", "train", 0)
        num(t, "batch_size", "train", 1, integer=True)
        num(t, "accumulation_steps", "train", 1, integer=True)
        num(t, "clip_grad", "train", 0, allow_none=True)
        num(t, "label_smoothing", "train", 0)
        _check(t.get("label_smoothing", 0) < 1, f"train.label_smoothing must be < 1, got {t.get('label_smoothing')!r}")
        num(t, "mixup", "train", 0)
        num(t, "cutmix", "train", 0)
        num(t, "mixup_switch_prob", "train", 0)
        num(t, "save_every_steps", "train", 0, integer=True)
        num(t, "keep_epoch_checkpoints", "train", 1, integer=True, allow_none=True)
        num(t, "max_steps", "train", 1, integer=True, allow_none=True)
        num(t, "eval_every", "train", 0, integer=True)
        num(t, "num_threads", "train", 1, integer=True, allow_none=True)
        _check(str(t.get("amp")).lower() in ("bf16", "bfloat16", "fp16", "float16", "none", "false", "fp32", "float32"),
               f"train.amp must be one of bf16, fp16, none; got {t.get('amp')!r}")
        _check(t.get("device", "auto") in ("auto", "cpu", "cuda"), f"train.device must be auto, cpu or cuda; got {t.get('device')!r}")
        betas = t.get("betas")
        _check(isinstance(betas, (list, tuple)) and len(betas) == 2 and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas),
               f"train.betas must be two numbers in [0, 1), got {betas!r}")
        r = t.get("resume")
        _check(r is None or isinstance(r, str), f"train.resume must be null, 'auto' or a path, got {r!r}")
    if m:
        num(m, "num_frames", "model", 1, integer=True)
        num(m, "drop_path", "model", 0)
        _check(isinstance(m.get("arch"), (str, dict)), f"model.arch must be an architecture name or a dict of config fields, got {m.get('arch')!r}")
        _check(isinstance(m.get("overrides", {}), dict), f"model.overrides must be a mapping, got {m.get('overrides')!r}")
    if d:
        num(d, "input_size", "data", 1, integer=True)
        num(d, "num_workers", "data", 0, integer=True)
        num(d, "crop_pct", "data", allow_none=True)
        _check(d.get("crop_pct") is None or 0 < d["crop_pct"] <= 1, f"data.crop_pct must be in (0, 1], got {d.get('crop_pct')!r}")
        num(d, "num_classes", "data", 1, integer=True, allow_none=True)
        _check("{}" in str(d.get("text_template", "{}")), f"data.text_template must contain '{{}}', got {d.get('text_template')!r}")
    return cfg


def dump_config(cfg: Mapping) -> str:
    return yaml.safe_dump(_plain(cfg), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
