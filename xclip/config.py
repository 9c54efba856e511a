"""The run configuration: one typed tree of dataclasses, one set of defaults.

A run is described by :class:`RunConfig` (sections ``model``, ``data``,
``train``, ``eval``, ``log``, plus ``seed``, ``output`` and a free-form
``extra``). :func:`load_config` builds it from, in order, the defaults below,
a YAML file (and any files it names under ``base:``, relative to itself) and
dotted ``key=value`` overrides, then validates it once. Every consumer reads
typed fields (``cfg.train.amp``); there is no second default anywhere else.

Overrides use dotted keys (``train.lr=1e-5``); values are parsed as YAML
scalars/lists (``true``, ``null``, ``3``, ``1e-5``, ``[1, 2]``), with
``1e-5``-style floats recognised (plain YAML 1.1 would read them as strings).

Every bad key or value raises :class:`ConfigError` (a ``ValueError``) with
one line naming the key, the value and what was expected; an unknown key also
names the closest known ones. Renamed keys keep working with a
``DeprecationWarning`` (see :data:`ALIASES`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union

import yaml

from .runtime import AMP_NAMES, DEVICES, parse_amp

__all__ = ["RunConfig", "ModelConfig", "DataConfig", "TrainConfig", "EvalConfig", "LogConfig", "ConfigError",
           "DEFAULTS", "ALIASES", "load_config", "parse_value", "parse_overrides", "apply_override", "merge",
           "validate", "dump_config", "to_config"]


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it (one line)."""


# Defaults mirror the official X-CLIP recipe (microsoft/VideoX, X-CLIP/utils/config.py).
@dataclass
class ModelConfig:
    arch: Union[str, dict] = "ViT-B/32"   # an architecture name, or a dict of XCLIPConfig fields
    pretrained: Optional[str] = None      # CLIP / official / HF weights, or one of our checkpoints
    num_frames: int = 8                   # frames per clip
    drop_path: float = 0.0                # stochastic depth rate of the video encoder
    fix_text: bool = True                 # frozen, cached text encoder (official FIX_TEXT)
    grad_checkpointing: bool = False      # recompute activations in backward (saves memory)
    overrides: dict = field(default_factory=dict)  # extra XCLIPConfig fields for create_model


@dataclass
class DataConfig:
    root: str = ""                        # folder the list paths are relative to
    train_list: str = ""                  # official list: "relative/path.mp4 <label id>" per line
    val_list: str = ""                    # per-epoch validation list
    test_list: Optional[str] = None       # final multi-view test list; None: val_list
    labels: str = ""                      # labels CSV (id,name) or "a,b,c"
    num_classes: Optional[int] = None     # checked against the labels when given
    input_size: int = 224                 # crop side in pixels
    num_workers: int = 4                  # DataLoader worker processes per process
    decoder: str = "auto"                 # auto (torchcodec, else PyAV) | torchcodec | pyav | decord
    decode_device: str = "cpu"            # cpu | cuda[:N]: NVDEC through torchcodec (needs num_workers: 0)
    sampling: str = "segment"             # segment (TSN-style) | dense
    crop_pct: float = 0.875               # short side resized to input_size / crop_pct before cropping (256 for
                                          # 224); 1.0: straight to input_size (clips already at that size untouched)
    mean: Optional[list] = None           # per-channel mean; None: CLIP's
    std: Optional[list] = None            # per-channel std; None: CLIP's
    text_template: str = "{}"             # class name -> prompt text
    augment: Optional[dict] = None        # None: the default training augmentation; or a dict of
                                          # xclip.data.train_transform options (flip, jitter, grayscale, scales)
    cache_frames: bool = False            # decode each video once and keep its frames in memory (small data sets)


@dataclass
class TrainConfig:
    epochs: int = 30                      # training epochs
    warmup_epochs: float = 5              # linear warm-up length
    lr: float = 8.0e-6                    # CLIP parts; new modules get lr * new_module_lr_mult
    new_module_lr_mult: float = 10.0      # message tokens, MIT, prompt generator
    text_lr_mult: float = 1.0             # text tower (training it, fix_text=false) at lr * text_lr_mult
    text_freeze_epochs: float = 0         # fix_text=false: hold the text tower still (lr 0) for this many epochs,
                                          # then warm it up over warmup_epochs; 0 = train it from the first step
    min_lr_ratio: float = 0.01            # cosine floor at lr * min_lr_ratio
    warmup_init_lr: float = 0.0           # lr at the first warm-up step
    weight_decay: float = 0.001           # AdamW weight decay (not on biases, norms, embeddings)
    betas: list = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    eps: float = 1.0e-8                   # AdamW epsilon
    fused_optimizer: Union[str, bool] = "auto"  # fused AdamW kernel where supported (auto | true | false)
    batch_size: int = 8                   # per process
    accumulation_steps: int = 1           # micro-batches per optimiser step
    clip_grad: Optional[float] = None     # max global grad norm; None = off
    amp: Union[str, bool] = "bf16"        # bf16 | fp16 | none (fp16 uses a GradScaler); read as one of those three
    label_smoothing: float = 0.1          # cross-entropy label smoothing (also inside mixup targets)
    mixup: float = 0.8                    # mixup alpha; 0 = off
    cutmix: float = 1.0                   # cutmix alpha; 0 = off
    mixup_switch_prob: float = 0.5        # chance of cutmix instead of mixup when both are on
    resume: Optional[str] = None          # None | "auto" (newest valid checkpoint in output) | a path
    save_every_steps: int = 0             # extra mid-epoch checkpoints (0 = off)
    keep_step_checkpoints: int = 1        # mid-epoch checkpoints kept
    keep_epoch_checkpoints: Optional[int] = None  # None: keep every epoch-end checkpoint; N: only the N newest
    max_steps: Optional[int] = None       # stop after this many optimiser steps (debugging, tests)
    deterministic: bool = False           # torch deterministic algorithms (slower)
    eval_every: int = 1                   # epochs between validations; 0 = no per-epoch evaluation
    final_test: bool = True               # multi-view test after the last epoch
    device: str = "auto"                  # auto | cpu | cuda
    num_threads: Optional[int] = None     # torch intra-op CPU threads per process (None: torch's default)
    find_unused_parameters: bool = False  # DDP option, for models with unused trainable parameters
    debug_step_delay: float = 0.0         # seconds to sleep after each step (tests kill a run mid-epoch)


@dataclass
class EvalConfig:
    batch_size: Optional[int] = None      # None: train.batch_size
    num_clips: int = 4                    # final multi-view test: clips per video
    num_crops: int = 3                    # and crops per clip (1 or 3)


@dataclass
class LogConfig:
    print_every: int = 50                 # optimiser steps between log lines
    tensorboard: bool = True              # TensorBoard scalars under output/tb
    progress: bool = True                 # tqdm progress bars


@dataclass
class RunConfig:
    seed: int = 1024                      # same initial weights on every rank, then per-rank streams
    output: str = "runs/xclip"            # run folder: log, metrics, checkpoints, config.yaml
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    extra: dict = field(default_factory=dict)  # free-form, for user scripts; never read by xclip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping, *, strict: bool = True) -> "RunConfig":
        """Merge ``d`` (possibly partial, possibly an old checkpoint's config) over the defaults; validate."""
        return _build(merge(DEFAULTS, d, strict=strict))

    def replace(self, overrides: Iterable[str]) -> "RunConfig":
        """A copy with dotted ``key=value`` overrides applied (validated)."""
        cfg = self.to_dict()
        for keys, value in parse_overrides(overrides):
            apply_override(cfg, keys, value)
        return _build(cfg)


SECTIONS: dict[str, type] = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig,
                             "log": LogConfig}

# Old name -> new name (dotted). The old name keeps working with a DeprecationWarning.
ALIASES: dict[str, str] = {
    "test": "eval",   # the multi-view test section (eval.batch_size, eval.num_clips, eval.num_crops)
}

# Mappings whose children are free-form (not checked against a schema).
_FREE_FORM = {"model.overrides", "model.arch", "data.augment", "extra"}

DEFAULTS: dict[str, Any] = RunConfig().to_dict()

_FLOAT_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)$")


# ------------------------------------------------------------------ parsing
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
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.lr=1e-5)")
        key, _, value = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key or key part")
        out.append((_resolve_alias(key).split("."), parse_value(value)))
    return out


def _resolve_alias(dotted: str) -> str:
    """Map a (dotted) key through :data:`ALIASES`, warning once per use."""
    for old, new in ALIASES.items():
        if dotted == old or dotted.startswith(old + "."):
            warnings.warn(f"config key {old!r} is deprecated; use {new!r}", DeprecationWarning, stacklevel=4)
            return new + dotted[len(old):]
    return dotted


def _is_free(where: str) -> bool:
    return any(where == f or where.startswith(f + ".") for f in _FREE_FORM)


def _unknown(where: str, known: Iterable[str]) -> ConfigError:
    key = where.rsplit(".", 1)[-1]
    known = [str(k) for k in known]
    prefix = [k for k in known if len(k) >= 2 and (key.startswith(k) or k.startswith(key))]
    close = list(dict.fromkeys(prefix + difflib.get_close_matches(key, known, n=3, cutoff=0.6)))[:3]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else f"; known keys here: {sorted(known)}"
    return ConfigError(f"unknown config key {where!r}{hint}")


def apply_override(cfg: dict, path: list[str], value: Any, *, strict: bool = True) -> None:
    """Set ``cfg[path[0]][path[1]]... = value`` in a config dict.

    With ``strict`` a key unknown to the config raises :class:`ConfigError`
    (catches typos such as ``train.lr_rate``); children of free-form dicts
    (``model.overrides``, a dict ``model.arch``, ``data.augment``, ``extra``) may be new.
    """
    path = _resolve_alias(".".join(path)).split(".")
    node = cfg
    for i, part in enumerate(path[:-1]):
        where = ".".join(path[: i + 1])
        if part not in node or node[part] is None:
            if strict and not _is_free(where):
                raise _unknown(where, node)
            node[part] = {}
        if not isinstance(node[part], dict):
            raise ConfigError(f"config key {where!r} is a value, not a section; cannot set {'.'.join(path)!r}")
        node = node[part]
    where = ".".join(path)
    if strict and path[-1] not in node and not _is_free(".".join(path[:-1])):
        raise _unknown(where, node)
    if strict and len(path) == 1 and path[0] in SECTIONS and not isinstance(value, Mapping):
        raise ConfigError(f"{where!r} is a section; set one of its keys instead, e.g. {where}.KEY=value "
                          f"(got {where}={value!r})")
    node[path[-1]] = value


def merge(base: Mapping, update: Mapping, *, strict: bool = True, _prefix: str = "") -> dict:
    """Recursively merge ``update`` (aliases resolved) into a copy of ``base``."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        key = str(key)
        where = _resolve_alias(f"{_prefix}{key}")
        key = where.rsplit(".", 1)[-1]
        if key not in out and not _is_free(where) and key != "base":
            if strict:
                raise _unknown(where, out)
            warnings.warn(f"ignoring unknown config key {where!r}", stacklevel=2)
            continue
        if key in SECTIONS and not _prefix and value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"config section {key!r} must be a mapping of keys, got {value!r}")
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not _is_free(where):
            out[key] = merge(out[key], value, strict=strict, _prefix=where + ".")
        elif value is None and key in SECTIONS and not _prefix:
            continue  # an empty section in YAML ("eval:") keeps its defaults
        else:
            out[key] = copy.deepcopy(_fix_floats(value))
    return out


def _read_yaml(path: str, seen: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config {path}: circular base: chain {' -> '.join(seen + (path,))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config {path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
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


def load_config(path: str | None, overrides: Iterable[str] = (), *, strict: bool = True) -> RunConfig:
    """Defaults <- YAML file (with ``base:`` includes) <- ``key=value`` overrides, validated.

    Unknown keys raise :class:`ConfigError` (``strict``), so a typo never
    silently does nothing.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        try:
            cfg = merge(cfg, _read_yaml(path), strict=strict)
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith("config ") and path in msg else f"{path}: {msg}") from None
    for keys, value in parse_overrides(overrides):
        apply_override(cfg, keys, value, strict=strict)
    return _build(cfg)


def to_config(cfg: "RunConfig | Mapping") -> RunConfig:
    """A :class:`RunConfig` from a RunConfig (returned as is) or a (partial, possibly old) config dict."""
    return cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)


# ------------------------------------------------------------------ typing and validation
def _build(d: dict) -> RunConfig:
    kwargs: dict[str, Any] = {}
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        value = d.get(f.name, DEFAULTS[f.name])
        if f.name in SECTIONS:
            section_cls = SECTIONS[f.name]
            shints = typing.get_type_hints(section_cls)
            kwargs[f.name] = section_cls(**{sf.name: _coerce(f"{f.name}.{sf.name}", value[sf.name], shints[sf.name])
                                            for sf in dataclasses.fields(section_cls)})
        else:
            kwargs[f.name] = _coerce(f.name, value, hints[f.name])
    return validate(RunConfig(**kwargs))


def _type_name(tp: Any) -> str:
    args = typing.get_args(tp)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {type(None): "null", float: "number", int: "integer", str: "string", bool: "boolean (true or false)",
            list: "list", dict: "mapping"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(where: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the field type ``tp``; ints become floats where a float is expected."""
    origin = typing.get_origin(tp)
    if origin is Union:
        for arg in typing.get_args(tp):
            try:
                return _coerce(where, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{where} must be {_article(_type_name(tp))}, got {value!r}")
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is list:
        if isinstance(value, (list, tuple)):
            return list(value)
    elif tp is dict:
        if isinstance(value, Mapping):
            return dict(value)
    raise ConfigError(f"{where} must be {_article(_type_name(tp))}, got {value!r}")


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _at_least(cfg: Any, section: str, lo: float, *keys: str) -> None:
    obj = getattr(cfg, section)
    for key in keys:
        v = getattr(obj, key)
        _check(v is None or v >= lo, f"{section}.{key} must be >= {lo}, got {v!r}")


def validate(cfg: RunConfig) -> RunConfig:
    """Range and cross-field checks on a typed config; raise :class:`ConfigError` naming the first bad setting."""
    t, m, d, e = cfg.train, cfg.model, cfg.data, cfg.eval
    _at_least(cfg, "train", 1, "epochs", "batch_size", "accumulation_steps", "keep_epoch_checkpoints", "max_steps",
              "num_threads", "keep_step_checkpoints")
    _at_least(cfg, "train", 0, "warmup_epochs", "lr", "new_module_lr_mult", "text_lr_mult", "text_freeze_epochs",
              "min_lr_ratio", "weight_decay", "clip_grad", "label_smoothing", "mixup", "cutmix", "mixup_switch_prob",
              "save_every_steps", "eval_every", "warmup_init_lr", "debug_step_delay", "eps")
    if t.text_freeze_epochs > 0:
        _check(not m.fix_text, f"train.text_freeze_epochs={t.text_freeze_epochs!r} needs model.fix_text=false "
                               "(with fix_text the text tower is frozen for the whole run)")
        _check(t.text_freeze_epochs < t.epochs,
               f"train.text_freeze_epochs must be < train.epochs={t.epochs!r}, got {t.text_freeze_epochs!r}")
    _check(t.label_smoothing < 1, f"train.label_smoothing must be < 1, got {t.label_smoothing!r}")
    _check(t.mixup_switch_prob <= 1, f"train.mixup_switch_prob must be <= 1, got {t.mixup_switch_prob!r}")
    try:
        t.amp = parse_amp(t.amp)
    except ValueError:
        raise ConfigError(f"train.amp must be one of {', '.join(sorted(set(AMP_NAMES.values())))}; got {t.amp!r}") from None
    _check(t.device in DEVICES, f"train.device must be {', '.join(DEVICES)}; got {t.device!r}")
    _check(t.fused_optimizer in ("auto", True, False),
           f"train.fused_optimizer must be auto, true or false; got {t.fused_optimizer!r}")
    _check(len(t.betas) == 2 and all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1
                                     for b in t.betas), f"train.betas must be two numbers in [0, 1), got {t.betas!r}")
    t.betas = [float(b) for b in t.betas]
    _check(t.resume is None or t.resume.strip() != "", "train.resume must be null, 'auto' or a path, got ''")
    _at_least(cfg, "model", 1, "num_frames")
    _at_least(cfg, "model", 0, "drop_path")
    _check(m.drop_path < 1, f"model.drop_path must be < 1, got {m.drop_path!r}")
    _at_least(cfg, "data", 1, "input_size", "num_classes")
    _at_least(cfg, "data", 0, "num_workers")
    _check(0 < d.crop_pct <= 1, f"data.crop_pct must be in (0, 1], got {d.crop_pct!r}")
    _check(d.sampling in ("segment", "dense"), f"data.sampling must be segment or dense, got {d.sampling!r}")
    _check(d.decoder in ("auto", "torchcodec", "pyav", "decord"),
           f"data.decoder must be auto, torchcodec, pyav or decord, got {d.decoder!r}")
    _check(d.decode_device == "cpu" or re.fullmatch(r"cuda(:\d+)?", str(d.decode_device)) is not None,
           f"data.decode_device must be cpu, cuda or cuda:N, got {d.decode_device!r}")
    _check(d.decode_device == "cpu" or d.decoder in ("auto", "torchcodec"),
           f"data.decode_device={d.decode_device} (NVDEC) needs data.decoder torchcodec or auto, got {d.decoder!r}")
    for key in ("mean", "std"):
        v = getattr(d, key)
        _check(v is None or (len(v) == 3 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)),
               f"data.{key} must be null or three numbers, got {v!r}")
    _check(d.std is None or all(x > 0 for x in d.std), f"data.std must be positive, got {d.std!r}")
    check_template(d.text_template, "data.text_template")
    _at_least(cfg, "eval", 1, "batch_size", "num_clips")
    _check(e.num_crops in (1, 3), f"eval.num_crops must be 1 or 3, got {e.num_crops!r}")
    _at_least(cfg, "log", 1, "print_every")
    return cfg


def check_template(template: str, where: str) -> str:
    """A prompt template must hold exactly one ``{}`` and format a class name."""
    _check("{}" in template, f"{where} must contain '{{}}' (where the class name goes), got {template!r}")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as e:
        raise ConfigError(f"{where} {template!r} cannot format a class name: {type(e).__name__}: {e}") from None
    return template


def dump_config(cfg: "RunConfig | Mapping") -> str:
    """The resolved config as YAML (what ``config.yaml`` and checkpoints store)."""
    return yaml.safe_dump(_plain(cfg.to_dict() if isinstance(cfg, RunConfig) else cfg), sort_keys=False)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj
