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

Nothing stored in a checkpoint runs: pickles and TorchScript archives are read
by :mod:`xclip.model.safeload` (a restricted unpickler; TorchScript archives are
unpacked as zips, never ``torch.jit.load``-ed). Every unreadable or unusable
checkpoint raises :class:`CheckpointError` (a ``ValueError``) naming the file and
what is wrong. docs/trust.md says what is trusted.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import XCLIPConfig, arch_config
from .model import XCLIP, interpolate_frames
from .preprocessing import clean_preprocessing, from_train_config, read_preprocessing
from .safeload import CfgNodeStandIn, CheckpointError, OpaqueObject, read_pickle_file, restricted_pickle  # noqa: F401

__all__ = ["load_pretrained", "load_checkpoint_file", "CheckpointError", "CheckpointMismatchError", "infer_config",
           "detect_format", "load_state_dict_strict", "save_checkpoint"]


class CheckpointMismatchError(CheckpointError):
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
        self.path, self.problem = where or None, "\n".join(lines)
        ValueError.__init__(self, self.problem)


def load_checkpoint_file(path) -> Any:
    """The object stored in a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file, without running anything in it.

    A TorchScript archive (OpenAI's CLIP releases) returns its state dict (parameters and buffers), read from
    the archive's pickled records; its TorchScript code is never loaded. Raises :class:`CheckpointError`.
    """
    path = Path(path)
    if path.is_file() and (path.suffix == ".safetensors" or _looks_like_safetensors(path)):
        return _read_safetensors(path)
    return read_pickle_file(path)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file whatever its name: 8-byte little-endian header length, then a JSON object."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 0 < int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    try:
        return load_file(str(path))
    except Exception as e:  # SafetensorError, header JSON errors, short data
        raise CheckpointError(path, f"corrupt safetensors file ({type(e).__name__}: {e})") from None


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
    :class:`CheckpointMismatchError` listing the offending keys. Any checkpoint
    that cannot be read or used raises :class:`CheckpointError` (a ``ValueError``)
    naming the file and what is wrong; nothing stored in the file is executed.
    """
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1):
        raise ValueError(f"load_pretrained: num_frames must be a positive integer or None, got {num_frames!r}")
    if isinstance(path, dict):
        obj, where = path, "<dict>"
    else:
        p = Path(path)
        where = str(p)
        if p.is_dir():
            from .hf import read_hf_directory

            cfg, sd = read_hf_directory(p)
            try:
                cfg = cfg.replace(**overrides)
            except (TypeError, ValueError) as e:
                raise CheckpointError(p, f"invalid configuration: {e}") from None
            model = _tag(_build_checked(cfg, sd, num_frames, where), where)
            model.preprocessing = read_preprocessing(p)
            return model
        obj = load_checkpoint_file(p)
    model = _tag(_load_object(obj, where, num_frames, overrides), where)
    model.preprocessing = _stored_preprocessing(obj)
    return model


def _stored_preprocessing(obj: Any) -> dict | None:
    """The preprocessing a checkpoint records (``preprocessing``, else derived from ``train_config``)."""
    if not isinstance(obj, dict):
        return None
    pre = clean_preprocessing(obj.get("preprocessing"))
    return pre if pre is not None else from_train_config(obj.get("train_config"))


def _tag(model: XCLIP, where: str) -> XCLIP:
    """Remember where the weights came from, for error messages at use (e.g. token ids beyond the vocabulary)."""
    model.checkpoint_path = where
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:  # a diverged or corrupted run: every score would be NaN
        raise CheckpointError(where, f"{len(bad)} weight tensor(s) hold NaN or infinite values (first: {bad[0]}); "
                                     "these weights cannot give meaningful predictions")
    return model


def _build_checked(cfg, sd, num_frames, where, from_clip=False) -> XCLIP:
    try:
        return _build(cfg, sd, num_frames, where, from_clip=from_clip)
    except CheckpointError:
        raise
    except ValueError as e:  # a config or shape the model rejects (e.g. num_frames=0, zero-sized weights)
        raise CheckpointError(where, str(e)) from None


def _load_object(obj: Any, where: str, num_frames, overrides) -> XCLIP:
    if not isinstance(obj, dict):
        raise CheckpointError(where, f"expected a state dict or a dict with 'model', got {type(obj).__name__}")
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
        raise CheckpointError(where, f"state dict entries that are not tensors: {[str(k) for k in bad[:10]]}")
    sd = _strip_prefix({k: v for k, v in sd.items() if k not in _OPENAI_EXTRAS})
    try:
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
    except CheckpointError:
        raise
    except (ValueError, TypeError, IndexError) as e:  # unrecognised layout, impossible shapes, bad stored config
        raise CheckpointError(where, str(e)) from None
    model = _build_checked(cfg, sd, num_frames, where, from_clip=(fmt == "clip"))
    model.checkpoint_format = fmt  # "clip": the X-CLIP modules (messages, MIT, prompts) are freshly initialised
    return model


def save_checkpoint(model: XCLIP, path, **extra) -> None:
    """``{"model": state_dict, "config": dict, **extra}``: an official-format checkpoint that ``load_pretrained`` reads."""
    pre = getattr(model, "preprocessing", None)
    if pre and "preprocessing" not in extra:
        extra["preprocessing"] = dict(pre)
    torch.save({"model": model.state_dict(), "config": model.config.to_dict(), **extra}, path)
