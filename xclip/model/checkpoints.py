"""Reading and writing X-CLIP checkpoints in three formats.

- **OpenAI CLIP** (TorchScript archive, or its state dict): X-CLIP initialised
  from CLIP; the new modules (messages, MIT, prompt generator) keep their fresh
  initialisation. Every CLIP weight must be used and fit.
- **official X-CLIP** (microsoft/VideoX): ``{"model": state_dict, "config":
  <yacs CfgNode>, "optimizer": ..., ...}``, or a bare state dict. Our own
  training checkpoints ``{"model": ..., "config": <dict of XCLIPConfig fields>}``
  are the same format.
- **Hugging Face** directory (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``), as written by transformers' ``XCLIPModel``.

Pickles are never allowed to run code: they are read with a restricted
unpickler whose ``find_class`` returns only torch's own weights-only allow-list
(tensor rebuilders, OrderedDict, set...), a few numpy data constructors, and a
plain ``dict`` stand-in for ``yacs.config.CfgNode``; any other global becomes an
inert placeholder that records its arguments and calls nothing.
"""

from __future__ import annotations

import pickle
import re
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import XCLIPConfig, arch_config
from .model import XCLIP, interpolate_frames

__all__ = ["load_pretrained", "load_checkpoint_file", "CheckpointMismatchError", "infer_config", "detect_format",
           "load_state_dict_strict", "save_checkpoint"]


class CheckpointMismatchError(ValueError):
    """A state dict does not fit the model: lists missing, unexpected and wrongly shaped keys."""

    def __init__(self, missing, unexpected, mismatched, where: str = "") -> None:
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
        lines = [f"checkpoint does not fit the model{(' (' + where + ')') if where else ''}:"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {', '.join(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {', '.join(self.unexpected)}")
        if self.mismatched:
            lines.append(f"  wrongly shaped keys ({len(self.mismatched)}): " + ", ".join(
                f"{k} (checkpoint {tuple(a)}, model {tuple(b)})" for k, a, b in self.mismatched))
        super().__init__("\n".join(lines))


# --- a pickle reader that executes nothing -------------------------------------------


class CfgNodeStandIn(dict):
    """What a pickled ``yacs.config.CfgNode`` becomes: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state):  # yacs' private flags; kept out of the mapping
        object.__setattr__(self, "_yacs_state", state)


class OpaqueObject:
    """A placeholder for a pickled object of a class outside the allow-list (never constructed)."""

    def __init__(self, qualname: str, args: tuple = ()) -> None:
        self._qualname, self._args, self._state, self._items = qualname, args, None, {}

    def __setstate__(self, state) -> None:
        self._state = state

    def __setitem__(self, k, v) -> None:
        self._items[k] = v

    def append(self, v) -> None:
        self._items[len(self._items)] = v

    def extend(self, vs) -> None:
        for v in vs:
            self.append(v)

    def __repr__(self) -> str:
        return f"<unpickled {self._qualname} (not constructed)>"


def _opaque_new(qualname):
    class _Opaque(OpaqueObject):
        def __new__(cls, *args, **kwargs):
            obj = object.__new__(cls)
            OpaqueObject.__init__(obj, qualname, args)
            return obj

        def __init__(self, *args, **kwargs):  # pickle never calls __init__ for NEWOBJ; REDUCE does
            if not hasattr(self, "_qualname"):
                OpaqueObject.__init__(self, qualname, args)

    _Opaque.__qualname__ = _Opaque.__name__ = qualname
    return _Opaque


def _allowed_globals() -> dict[str, Any]:
    from torch import _weights_only_unpickler as wou

    allowed = dict(wou._get_allowed_globals())
    allowed["yacs.config.CfgNode"] = CfgNodeStandIn
    allowed["builtins.frozenset"] = frozenset
    allowed["builtins.slice"] = slice
    try:
        import numpy as np

        try:
            from numpy._core import multiarray as ma
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray as ma
        allowed["numpy.dtype"] = np.dtype
        allowed["numpy.ndarray"] = np.ndarray
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[f"{mod}.scalar"] = ma.scalar
            allowed[f"{mod}._reconstruct"] = ma._reconstruct
        for name in dir(getattr(np, "dtypes", None) or object()):
            if name.endswith("DType"):
                allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    except Exception:  # numpy absent or changed: its objects become placeholders
        pass
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    _allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str):
        if _RestrictedUnpickler._allowed is None:
            _RestrictedUnpickler._allowed = _allowed_globals()
        key = f"{module}.{name}"
        obj = _RestrictedUnpickler._allowed.get(key)
        if obj is not None:
            return obj
        return _opaque_new(key)


# torch.load(pickle_module=...) needs a module-like object with Unpickler and load
restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
    __name__="xclip_restricted_pickle",
)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(re.match(r"[^/]+/constants\.pkl$", n) or re.match(r"[^/]+/code/", n) for n in names)


def load_checkpoint_file(path) -> Any:
    """The object stored in a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file, without running pickled code.

    A TorchScript archive (OpenAI's CLIP releases) is read with ``torch.jit.load``
    (TorchScript deserialisation does not execute Python) and returns its state dict.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        with warnings.catch_warnings():  # torch.jit.load is deprecated, but it is how OpenAI shipped CLIP
            warnings.simplefilter("ignore", FutureWarning)
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    try:  # fast path: plain tensors and containers only
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)


# --- formats --------------------------------------------------------------------------

_OPENAI_EXTRAS = ("input_resolution", "context_length", "vocab_size")


def _strip_prefix(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    for prefix in ("module.", "_orig_mod.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_format(sd: dict[str, Tensor]) -> str:
    """'hf', 'xclip' (official layout) or 'clip' (OpenAI CLIP) for a state dict."""
    keys = set(sd)
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        return "hf"
    if any(".message_fc." in k for k in keys) or any(k.startswith(("mit.", "prompts_generator.")) for k in keys):
        return "xclip"
    if "visual.conv1.weight" in keys and "token_embedding.weight" in keys:
        return "clip"
    raise ValueError(
        "unrecognised checkpoint: expected an OpenAI CLIP, official X-CLIP or Hugging Face X-CLIP state dict; "
        f"first keys: {sorted(keys)[:8]}"
    )


def _count(sd, prefix: str) -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd for m in [pat.match(k)] if m})


def infer_config(sd: dict[str, Tensor], num_frames: int | None = None, **overrides) -> XCLIPConfig:
    """Architecture of an official-layout X-CLIP or OpenAI CLIP state dict, from the weight shapes."""
    try:
        w = sd["visual.conv1.weight"]
        vision_width, patch = w.shape[0], w.shape[-1]
        grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
        tw = sd["ln_final.weight"].shape[0]
        d: dict[str, Any] = dict(
            embed_dim=sd["text_projection"].shape[1],
            image_resolution=grid * patch,
            vision_layers=_count(sd, "visual.transformer.resblocks."),
            vision_width=vision_width,
            vision_patch_size=patch,
            context_length=sd["positional_embedding"].shape[0],
            vocab_size=sd["token_embedding.weight"].shape[0],
            transformer_width=tw,
            transformer_heads=max(1, tw // 64),
            transformer_layers=_count(sd, "transformer.resblocks."),
            mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] // vision_width,
        )
    except KeyError as e:
        raise ValueError(f"cannot infer the architecture: the checkpoint has no {e.args[0]!r}") from None
    if any(".message_fc." in k for k in sd) or "mit.positional_embedding" in sd:
        d["cross_frame"] = True
    elif any(k.startswith("prompts_generator.") for k in sd):
        d["cross_frame"] = False
    if "mit.positional_embedding" in sd:
        d["num_frames"] = sd["mit.positional_embedding"].shape[1]
        d["mit_layers"] = _count(sd, "mit.resblocks.")
    if any(k.startswith("prompts_generator.decoder.") for k in sd):
        d["prompt_layers"] = _count(sd, "prompts_generator.decoder.")
    if "prompts_generator.alpha" in sd:
        d["prompt_alpha"] = float(sd["prompts_generator.alpha"].float().mean())
    for name, (W, P) in {"ViT-B/32": (768, 32), "ViT-B/16": (768, 16), "ViT-L/14": (1024, 14)}.items():
        if (vision_width, patch) == (W, P):
            d["arch"] = name + ("@336" if name == "ViT-L/14" and d["image_resolution"] == 336 else "")
    d.update(overrides)
    return XCLIPConfig(**d)


def _yacs_fields(cfg: Any) -> dict[str, Any]:
    """Fields of an official yacs config that the weights cannot tell."""
    out: dict[str, Any] = {}
    if not isinstance(cfg, dict):
        return out
    model, data = cfg.get("MODEL") or {}, cfg.get("DATA") or {}
    if isinstance(model, dict) and isinstance(model.get("DROP_PATH_RATE"), (int, float)):
        out["drop_path"] = float(model["DROP_PATH_RATE"])
    if isinstance(model, dict) and isinstance(model.get("FIX_TEXT"), bool):
        out["freeze_text"] = model["FIX_TEXT"]
    if isinstance(data, dict) and isinstance(data.get("NUM_FRAMES"), int):
        out["num_frames"] = data["NUM_FRAMES"]
    return out


def load_state_dict_strict(model: XCLIP, sd: dict[str, Tensor], where: str = "", allow_missing=()) -> None:
    """``load_state_dict`` that first lists every missing / unexpected / wrongly shaped key (ValueError)."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not any(k.startswith(p) for p in allow_missing)]
    unexpected = [k for k in sd if k not in own]
    mismatched = [(k, sd[k].shape, own[k].shape) for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, where)
    model.load_state_dict(sd, strict=not allow_missing)


def _new_module_key(k: str) -> bool:
    return (".message_" in k or k.startswith(("mit.", "prompts_generator.", "prompts_visual_")))


def _build(cfg: XCLIPConfig, sd: dict[str, Tensor], num_frames: int | None, where: str, from_clip: bool = False):
    if num_frames is not None and num_frames != cfg.num_frames:
        if "mit.positional_embedding" in sd:
            sd = dict(sd)
            sd["mit.positional_embedding"] = interpolate_frames(sd["mit.positional_embedding"], num_frames)
        cfg = cfg.replace(num_frames=num_frames)
    model = XCLIP(cfg)
    if from_clip:
        load_state_dict_strict(model, sd, where, allow_missing=[k for k in model.state_dict() if _new_module_key(k)])
    else:
        load_state_dict_strict(model, sd, where)
    if cfg.freeze_text:
        model.freeze_text_encoder()
    return model


def load_pretrained(path, num_frames: int | None = None, **overrides) -> XCLIP:
    """An :class:`XCLIP` from an OpenAI CLIP, official X-CLIP or Hugging Face X-CLIP checkpoint.

    The architecture is inferred from the weights (or read from the config
    stored beside them). ``num_frames`` different from the checkpoint's
    interpolates the MIT positional embedding (with a warning). ``overrides``
    set config fields the weights do not fix (``drop_path``, ``freeze_text``,
    head counts...). Loading is strict: a mismatch raises
    :class:`CheckpointMismatchError` listing the offending keys.
    """
    if isinstance(path, dict):
        obj, where = path, "<dict>"
    else:
        p = Path(path)
        where = str(p)
        if p.is_dir():
            from .hf import read_hf_directory

            cfg, sd = read_hf_directory(p)
            return _build(cfg.replace(**overrides), sd, num_frames, where)
        obj = load_checkpoint_file(p)
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a state dict or a dict with 'model', got {type(obj).__name__}")
    stored_cfg = None
    if "model" in obj and isinstance(obj["model"], dict):
        stored_cfg = obj.get("config")
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
    else:
        sd = obj
    bad = [k for k, v in sd.items() if not isinstance(v, Tensor) and k not in _OPENAI_EXTRAS]
    if bad:
        raise ValueError(f"{where}: state dict entries that are not tensors: {bad[:10]}")
    sd = _strip_prefix({k: v for k, v in sd.items() if k not in _OPENAI_EXTRAS})
    fmt = detect_format(sd)
    if fmt == "hf":
        from .hf import from_hf_state_dict

        sd = from_hf_state_dict(sd)
        fmt = "xclip"
    if isinstance(stored_cfg, dict) and not isinstance(stored_cfg, CfgNodeStandIn) and "embed_dim" in stored_cfg:
        cfg = XCLIPConfig.from_dict(dict(stored_cfg)).replace(**overrides)  # our own training checkpoints
    else:
        extra = _yacs_fields(stored_cfg) if stored_cfg is not None else {}
        if fmt == "xclip" and "mit.positional_embedding" in sd:
            extra.pop("num_frames", None)  # the weights say how many frames the MIT was trained on
        if fmt == "clip":
            extra.setdefault("num_frames", num_frames or 8)
        cfg = infer_config(sd, **{**extra, **overrides})
    return _build(cfg, sd, num_frames, where, from_clip=(fmt == "clip"))


def save_checkpoint(model: XCLIP, path, **extra) -> None:
    """``{"model": state_dict, "config": dict, **extra}``: an official-format checkpoint that ``load_pretrained`` reads."""
    torch.save({"model": model.state_dict(), "config": model.config.to_dict(), **extra}, path)
