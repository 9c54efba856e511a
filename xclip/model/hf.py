"""Hugging Face X-CLIP format: config and state-dict conversion, ``save_pretrained``.

transformers is not needed to read or write the format: ``config.json`` is
plain JSON and the weights are safetensors (or ``pytorch_model.bin`` read with
the restricted reader of :mod:`xclip.model.safeload`).

The key correspondence is one flat table, ``KEY_TABLE`` (official name
pattern, Hugging Face name pattern, kind), read in both directions: the packed
``in_proj_{weight,bias}`` of ``nn.MultiheadAttention`` are three ``{q,k,v}_proj``
tensors in Hugging Face's layout, and ``visual.proj`` / ``text_projection`` are
stored transposed as ``visual_projection.weight`` / ``text_projection.weight``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import Tensor

from .config import XCLIPConfig

__all__ = ["config_to_hf", "config_from_hf", "to_hf_state_dict", "from_hf_state_dict", "save_pretrained",
           "read_hf_directory", "KEY_TABLE"]

# The key correspondence, both directions: one row per official tensor name pattern. Placeholders: {i} a block
# index, {p} "weight" or "bias", {rest} any remaining key, {qkv} one of q / k / v. Kinds: SAME (one tensor, same
# values), TRANSPOSED (stored transposed), QKV (the official packed in_proj_* is three HF tensors, split along dim 0).
SAME, TRANSPOSED, QKV = "same", "transposed", "qkv"
_V, _VH = "visual.transformer.resblocks.{i}.", "vision_model.encoder.layers.{i}."
_T, _TH = "transformer.resblocks.{i}.", "text_model.encoder.layers.{i}."
_M, _MH = "mit.resblocks.{i}.", "mit.encoder.layers.{i}."
KEY_TABLE: tuple[tuple[str, str, str], ...] = (
    # official                               Hugging Face                                         kind
    ("visual.conv1.weight",                  "vision_model.embeddings.patch_embedding.weight",    SAME),
    ("visual.class_embedding",               "vision_model.embeddings.class_embedding",           SAME),
    ("visual.positional_embedding",          "vision_model.embeddings.position_embedding.weight", SAME),
    ("visual.ln_pre.{p}",                    "vision_model.pre_layernorm.{p}",                    SAME),
    ("visual.ln_post.{p}",                   "vision_model.post_layernorm.{p}",                   SAME),
    ("visual.proj",                          "visual_projection.weight",                          TRANSPOSED),
    (_V + "attn.in_proj_{p}",                _VH + "self_attn.{qkv}_proj.{p}",                    QKV),
    (_V + "attn.out_proj.{p}",               _VH + "self_attn.out_proj.{p}",                      SAME),
    (_V + "message_attn.in_proj_{p}",        _VH + "message_attn.{qkv}_proj.{p}",                 QKV),
    (_V + "message_attn.out_proj.{p}",       _VH + "message_attn.out_proj.{p}",                   SAME),
    (_V + "message_fc.{p}",                  _VH + "message_fc.{p}",                              SAME),
    (_V + "message_ln.{p}",                  _VH + "message_ln.{p}",                              SAME),
    (_V + "ln_1.{p}",                        _VH + "layer_norm1.{p}",                             SAME),
    (_V + "ln_2.{p}",                        _VH + "layer_norm2.{p}",                             SAME),
    (_V + "mlp.c_fc.{p}",                    _VH + "mlp.fc1.{p}",                                 SAME),
    (_V + "mlp.c_proj.{p}",                  _VH + "mlp.fc2.{p}",                                 SAME),
    ("token_embedding.weight",               "text_model.embeddings.token_embedding.weight",      SAME),
    ("positional_embedding",                 "text_model.embeddings.position_embedding.weight",   SAME),
    (_T + "attn.in_proj_{p}",                _TH + "self_attn.{qkv}_proj.{p}",                    QKV),
    (_T + "attn.out_proj.{p}",               _TH + "self_attn.out_proj.{p}",                      SAME),
    (_T + "ln_1.{p}",                        _TH + "layer_norm1.{p}",                             SAME),
    (_T + "ln_2.{p}",                        _TH + "layer_norm2.{p}",                             SAME),
    (_T + "mlp.c_fc.{p}",                    _TH + "mlp.fc1.{p}",                                 SAME),
    (_T + "mlp.c_proj.{p}",                  _TH + "mlp.fc2.{p}",                                 SAME),
    ("ln_final.{p}",                         "text_model.final_layer_norm.{p}",                   SAME),
    ("text_projection",                      "text_projection.weight",                            TRANSPOSED),
    ("logit_scale",                          "logit_scale",                                       SAME),
    ("mit.positional_embedding",             "mit.position_embedding",                            SAME),
    (_M + "attn.in_proj_{p}",                _MH + "self_attn.{qkv}_proj.{p}",                    QKV),
    (_M + "attn.out_proj.{p}",               _MH + "self_attn.out_proj.{p}",                      SAME),
    (_M + "ln_1.{p}",                        _MH + "layer_norm1.{p}",                             SAME),
    (_M + "ln_2.{p}",                        _MH + "layer_norm2.{p}",                             SAME),
    (_M + "mlp.c_fc.{p}",                    _MH + "mlp.fc1.{p}",                                 SAME),
    (_M + "mlp.c_proj.{p}",                  _MH + "mlp.fc2.{p}",                                 SAME),
    ("prompts_visual_ln.{p}",                "prompts_visual_layernorm.{p}",                      SAME),
    ("prompts_visual_proj",                  "prompts_visual_projection",                         SAME),
    ("prompts_generator.norm.{p}",           "prompts_generator.layernorm.{p}",                   SAME),
    ("prompts_generator.decoder.{rest}",     "prompts_generator.decoder.{rest}",                  SAME),
    ("prompts_generator.alpha",              "prompts_generator.alpha",                           SAME),
)
_SLOTS = {"i": r"\d+", "p": "weight|bias", "rest": ".+", "qkv": "[qkv]"}


def _pattern(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)  # literal, slot, literal, slot, ...
    rx = "".join(re.escape(s) if k % 2 == 0 else f"(?P<{s}>{_SLOTS[s]})" for k, s in enumerate(parts))
    return re.compile(rx)


_ROWS = [(_pattern(official), _pattern(hf), official, hf, kind) for official, hf, kind in KEY_TABLE]


def _lookup(key: str, side: int):
    """``(row, slot values)`` of the table row whose official (side 0) or HF (side 1) pattern is ``key``."""
    for row in _ROWS:
        m = row[side].fullmatch(key)
        if m:
            return row, m.groupdict()
    return None, None


def to_hf_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official-layout state dict -> Hugging Face ``XCLIPModel`` state dict."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, t in sd.items():
        row, slots = _lookup(key, 0)
        if row is None:
            unknown.append(key)
        elif row[4] == QKV:
            for name, part in zip("qkv", t.chunk(3, dim=0)):
                out[row[3].format(**slots, qkv=name)] = part.contiguous()
        else:
            out[row[3].format(**slots)] = t.t().contiguous() if row[4] == TRANSPOSED else t
    if unknown:
        raise ValueError(f"cannot map these official-layout keys to the Hugging Face layout: {unknown}")
    return out


def from_hf_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Hugging Face ``XCLIPModel`` state dict -> official-layout state dict."""
    out: dict[str, Tensor] = {}
    packed: dict[str, dict[str, Tensor]] = {}
    unknown = []
    for key, t in sd.items():
        if key.endswith("position_ids"):  # non-persistent buffer in some transformers versions
            continue
        row, slots = _lookup(key, 1)
        if row is None:
            unknown.append(key)
        elif row[4] == QKV:
            part = slots.pop("qkv")
            packed.setdefault(row[2].format(**slots), {})[part] = t
        else:
            out[row[2].format(**slots)] = t.t().contiguous() if row[4] == TRANSPOSED else t
    for key, parts in packed.items():
        if set(parts) != set("qkv"):
            unknown.append(f"{key} (has only {sorted(parts)} of q/k/v)")
            continue
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown:
        raise ValueError(f"cannot map these Hugging Face keys to the official X-CLIP layout: {unknown}")
    return out


def config_to_hf(cfg: XCLIPConfig) -> dict:
    """The ``config.json`` of transformers' ``XCLIPModel`` for this configuration."""
    if not cfg.cross_frame:
        raise ValueError("the Hugging Face X-CLIP format has no cross_frame=False variant (no messages, no MIT)")
    E, r = cfg.embed_dim, cfg.mlp_ratio
    return {
        "architectures": ["XCLIPModel"],
        "model_type": "xclip",
        "projection_dim": E,
        "prompt_layers": cfg.prompt_layers,
        "prompt_alpha": cfg.prompt_alpha,
        "prompt_hidden_act": "quick_gelu",
        "prompt_num_attention_heads": cfg.prompt_num_heads,
        "prompt_attention_dropout": 0.0,
        "prompt_projection_dropout": 0.0,
        "logit_scale_init_value": cfg.logit_scale_init,
        "text_config": {
            "model_type": "xclip_text_model",
            "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.transformer_width,
            "intermediate_size": cfg.transformer_width * r,
            "num_hidden_layers": cfg.transformer_layers,
            "num_attention_heads": cfg.transformer_heads,
            "max_position_embeddings": cfg.context_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": cfg.layer_norm_eps,
            "eos_token_id": 2,  # transformers' legacy <eot> = argmax of the ids, as CLIP / X-CLIP
        },
        "vision_config": {
            "model_type": "xclip_vision_model",
            "hidden_size": cfg.vision_width,
            "intermediate_size": cfg.vision_width * r,
            "num_hidden_layers": cfg.vision_layers,
            "num_attention_heads": cfg.vision_num_heads,
            "mit_hidden_size": E,
            "mit_intermediate_size": E * r,
            "mit_num_hidden_layers": cfg.mit_layers,
            "mit_num_attention_heads": cfg.mit_num_heads,
            "image_size": cfg.image_resolution,
            "patch_size": cfg.vision_patch_size,
            "num_frames": cfg.num_frames,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": cfg.layer_norm_eps,
            "drop_path_rate": cfg.drop_path,
        },
        "xclip_kernels": {"arch": cfg.arch, "freeze_text": cfg.freeze_text},
    }


def config_from_hf(d: dict) -> XCLIPConfig:
    """An :class:`XCLIPConfig` from a Hugging Face X-CLIP ``config.json`` dict (transformers' defaults filled in)."""
    t = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
         "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
    v = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
         "mit_hidden_size": 512, "mit_intermediate_size": 2048, "mit_num_hidden_layers": 1,
         "mit_num_attention_heads": 8, "image_size": 224, "patch_size": 32, "num_frames": 8,
         "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "drop_path_rate": 0.0}
    t.update(d.get("text_config") or {})
    v.update(d.get("vision_config") or {})
    E = d.get("projection_dim", 512)
    problems = []
    for name, sub in (("text_config", t), ("vision_config", v)):
        if sub.get("hidden_act") != "quick_gelu":
            problems.append(f"{name}.hidden_act={sub.get('hidden_act')!r} (X-CLIP uses quick_gelu)")
    if d.get("prompt_hidden_act", "quick_gelu") != "quick_gelu":
        problems.append(f"prompt_hidden_act={d.get('prompt_hidden_act')!r}")
    r = t["intermediate_size"] // t["hidden_size"]
    if t["intermediate_size"] != r * t["hidden_size"] or v["intermediate_size"] != r * v["hidden_size"] or \
            v["mit_intermediate_size"] != r * E:
        problems.append(
            f"MLP sizes not a common multiple of the widths (text {t['intermediate_size']}/{t['hidden_size']}, "
            f"vision {v['intermediate_size']}/{v['hidden_size']}, mit {v['mit_intermediate_size']}/{E})"
        )
    if v["mit_hidden_size"] != E:
        problems.append(f"vision_config.mit_hidden_size={v['mit_hidden_size']} != projection_dim={E}")
    if t["layer_norm_eps"] != v["layer_norm_eps"]:
        problems.append(f"different layer_norm_eps in text ({t['layer_norm_eps']}) and vision ({v['layer_norm_eps']})")
    if problems:
        raise ValueError("unsupported Hugging Face X-CLIP config: " + "; ".join(problems))
    ours = d.get("xclip_kernels") or {}
    img, patch = v["image_size"], v["patch_size"]
    img = img[0] if isinstance(img, (list, tuple)) else img
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return XCLIPConfig(
        embed_dim=E,
        image_resolution=int(img),
        vision_layers=v["num_hidden_layers"],
        vision_width=v["hidden_size"],
        vision_patch_size=int(patch),
        context_length=t["max_position_embeddings"],
        vocab_size=t["vocab_size"],
        transformer_width=t["hidden_size"],
        transformer_heads=t["num_attention_heads"],
        transformer_layers=t["num_hidden_layers"],
        num_frames=v["num_frames"],
        mit_layers=v["mit_num_hidden_layers"],
        prompt_layers=d.get("prompt_layers", 2),
        prompt_alpha=float(d.get("prompt_alpha", 0.1)),
        drop_path=float(v.get("drop_path_rate", 0.0)),
        vision_heads=v["num_attention_heads"],
        mit_heads=v["mit_num_attention_heads"],
        prompt_heads=d.get("prompt_num_attention_heads", 8),
        mlp_ratio=r,
        layer_norm_eps=float(t["layer_norm_eps"]),
        logit_scale_init=float(d.get("logit_scale_init_value", 2.6592)),
        freeze_text=bool(ours.get("freeze_text", False)),
        arch=ours.get("arch"),
    )


def read_hf_directory(path) -> tuple[XCLIPConfig, dict[str, Tensor]]:
    """``(config, official-layout state dict)`` of a Hugging Face X-CLIP directory.

    Raises :class:`~xclip.model.safeload.CheckpointError` naming the file for a missing, unreadable or
    invalid ``config.json`` or weights file; ``pytorch_model.bin`` goes through the restricted reader.
    """
    from .checkpoints import load_checkpoint_file
    from .safeload import CheckpointError

    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(path, "a directory without config.json: not a Hugging Face X-CLIP directory")
    try:
        d = json.loads(cfg_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(cfg_file, f"not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(cfg_file, f"invalid JSON: {e}") from None
    if not isinstance(d, dict):
        raise CheckpointError(cfg_file, f"expected a JSON object, got a JSON {type(d).__name__}")
    if d.get("model_type") not in ("xclip", None):
        raise CheckpointError(cfg_file, f"model_type is {d.get('model_type')!r}, expected 'xclip'")
    for sub in ("text_config", "vision_config", "xclip_kernels"):
        if d.get(sub) is not None and not isinstance(d[sub], dict):
            raise CheckpointError(cfg_file, f"{sub} must be a JSON object, got {type(d[sub]).__name__}")
    try:
        cfg = config_from_hf(d)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as e:
        raise CheckpointError(cfg_file, f"invalid X-CLIP config: {type(e).__name__}: {e}") from None
    st, bins = path / "model.safetensors", path / "pytorch_model.bin"
    if st.exists():
        files = [st]
    elif bins.exists():
        files = [bins]
    else:
        files = sorted(path.glob("model-*.safetensors"))
        if not files:
            raise CheckpointError(path, "no model.safetensors, pytorch_model.bin or model-*.safetensors shards")
    sd: dict[str, Tensor] = {}
    for f in files:
        part = load_checkpoint_file(f)
        if not isinstance(part, dict) or not all(isinstance(v, Tensor) for v in part.values()):
            raise CheckpointError(f, "expected a dict of tensors")
        sd.update(part)
    sd = {k[len("x_clip."):] if k.startswith("x_clip.") else k: v for k, v in sd.items()}
    try:
        sd = from_hf_state_dict(sd)
    except ValueError as e:
        raise CheckpointError(files[0], str(e)) from None
    return cfg, sd


def save_pretrained(model, directory, safe_serialization: bool = True) -> None:
    """Write ``model`` (an ``xclip.XCLIP``) as a directory transformers' ``XCLIPModel.from_pretrained`` loads."""
    directory = Path(directory)
    cfg = config_to_hf(model.config)
    directory.mkdir(parents=True, exist_ok=True)
    sd = to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    sd = {k: v.contiguous().clone() for k, v in sd.items()}  # safetensors rejects shared / strided storage
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    from .preprocessing import write_preprocessing

    write_preprocessing(getattr(model, "preprocessing", None), directory, model.config.image_resolution)
    if safe_serialization:
        from safetensors.torch import save_file

        save_file(sd, str(directory / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(sd, directory / "pytorch_model.bin")
