"""The preprocessing a checkpoint was trained with, stored beside its weights.

Like a transformers processor config, a checkpoint says how its inputs must
be prepared: ``input_size``, ``crop_pct``, ``mean``, ``std``, ``num_frames``,
``sampling`` and the prompt ``text_template``. Training checkpoints keep it
under the key ``"preprocessing"`` (older ones: derived from their
``train_config``); ``save_pretrained`` directories keep it in
``xclip_preprocessing.json`` and, for transformers' ``XCLIPProcessor``, the
standard image keys in ``preprocessor_config.json``. :func:`xclip.load_pretrained`
sets ``model.preprocessing`` (a dict, or ``None`` when the checkpoint has
none); ``xclip predict`` and ``xclip eval`` use it unless a flag overrides it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

__all__ = ["PREPROCESSING_FILE", "KEYS", "clean_preprocessing", "from_train_config", "read_preprocessing",
           "write_preprocessing", "describe"]

PREPROCESSING_FILE = "xclip_preprocessing.json"
KEYS = ("input_size", "crop_pct", "mean", "std", "num_frames", "sampling", "text_template")


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def clean_preprocessing(d: Any) -> dict | None:
    """The known, well-typed entries of ``d`` (others are dropped: a stored record never breaks loading)."""
    if not isinstance(d, dict):
        return None
    out: dict[str, Any] = {}
    if isinstance(d.get("input_size"), int) and d["input_size"] > 0:
        out["input_size"] = int(d["input_size"])
    if _num(d.get("crop_pct")) and 0 < d["crop_pct"] <= 1:
        out["crop_pct"] = float(d["crop_pct"])
    for k in ("mean", "std"):
        v = d.get(k)
        if isinstance(v, (list, tuple)) and len(v) == 3 and all(_num(x) for x in v):
            out[k] = [float(x) for x in v]
    if isinstance(d.get("num_frames"), int) and d["num_frames"] > 0:
        out["num_frames"] = int(d["num_frames"])
    if d.get("sampling") in ("segment", "dense"):
        out["sampling"] = d["sampling"]
    t = d.get("text_template")
    if isinstance(t, str) and "{}" in t:
        try:
            t.format("x")
            out["text_template"] = t
        except (IndexError, KeyError, ValueError):
            pass
    return out or None


def from_train_config(tc: Any, default_mean=None, default_std=None) -> dict | None:
    """The preprocessing of a run config dict (a checkpoint's ``train_config``)."""
    if not isinstance(tc, dict) or not isinstance(tc.get("data"), dict):
        return None
    data, model = tc["data"], tc.get("model") if isinstance(tc.get("model"), dict) else {}
    return clean_preprocessing({
        "input_size": data.get("input_size"), "crop_pct": data.get("crop_pct"),
        "mean": data.get("mean") if data.get("mean") is not None else default_mean,
        "std": data.get("std") if data.get("std") is not None else default_std,
        "num_frames": model.get("num_frames"), "sampling": data.get("sampling"),
        "text_template": data.get("text_template"),
    })


def read_preprocessing(directory) -> dict | None:
    """``xclip_preprocessing.json`` of a directory, if any (unreadable: None)."""
    p = Path(directory) / PREPROCESSING_FILE
    if not p.is_file():
        return None
    try:
        return clean_preprocessing(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def write_preprocessing(pre: dict | None, directory, image_resolution: int) -> None:
    """``xclip_preprocessing.json`` plus a transformers ``preprocessor_config.json`` (resize, crop, mean, std)."""
    pre = clean_preprocessing(pre)
    if not pre:
        return
    directory = Path(directory)
    (directory / PREPROCESSING_FILE).write_text(json.dumps(pre, indent=2) + "\n")
    size = int(pre.get("input_size", image_resolution))
    hf = {
        "processor_class": "XCLIPProcessor",
        "image_processor_type": "VideoMAEImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": int(round(size / pre.get("crop_pct", 1.0)))},
        "resample": 2,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
    }
    if "mean" in pre and "std" in pre:
        hf["image_mean"], hf["image_std"] = pre["mean"], pre["std"]
    (directory / "preprocessor_config.json").write_text(json.dumps(hf, indent=2) + "\n")


def describe(pre: dict | None) -> str:
    if not pre:
        return "none stored"
    return ", ".join(f"{k} {pre[k]!r}" for k in KEYS if k in pre)
