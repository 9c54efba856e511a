"""Checkpoints: Hugging Face (both directions), official X-CLIP (yacs config, no code execution), OpenAI CLIP
(state dict and TorchScript), strict loading errors, frame interpolation, the convert CLI."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

import xclip
from xclip.model.checkpoints import CheckpointMismatchError, save_checkpoint

from test_model import tiny, tokens, video

transformers = pytest.importorskip("transformers")


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def official_tiny(**kw):
    """Official files carry no head counts: heads follow the official rule (width // 64) so inference recovers them.
    Widths of 128 give two heads everywhere (one head cannot tell a transposed head split)."""
    official = dict(vision_width=128, transformer_width=128, embed_dim=128, transformer_heads=2, vision_heads=None,
                    mit_heads=None, prompt_heads=None)
    return tiny(**{**official, **kw})


def logits(m, v, t):
    with torch.no_grad():
        return m.set_attn_backend("torch")(v, t)


# --- Hugging Face -----------------------------------------------------------------------------


def _hf_model(seed=0, frames=3):
    torch.manual_seed(seed)
    hc = transformers.XCLIPConfig(
        text_config=dict(vocab_size=500, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2, num_attention_heads=3,
                           mit_hidden_size=24, mit_intermediate_size=96, mit_num_hidden_layers=1,
                           mit_num_attention_heads=2, image_size=32, patch_size=8, num_frames=frames),
        projection_dim=24, prompt_layers=2, prompt_num_attention_heads=2, prompt_alpha=0.3)
    hm = transformers.XCLIPModel(hc).eval()
    with torch.no_grad():  # transformers zero-initialises biases: perturb everything so every weight matters
        for p in hm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hm


def _hf_logits(hm, v, t):
    with torch.no_grad():
        return hm(input_ids=t, pixel_values=v).logits_per_video


def test_hf_directory_loads_to_same_logits(tmp_path):
    hm = _hf_model()
    hm.save_pretrained(tmp_path)
    m = xclip.load_pretrained(tmp_path)
    assert m.config.vision_num_heads == 3 and m.config.mit_num_heads == 2 and m.config.num_frames == 3
    v, t = video(T=3), tokens(K=4)
    ref = _hf_logits(hm, v, t)
    assert rel_err(logits(m, v, t), ref) < 1e-5


def test_our_save_pretrained_loads_in_transformers(tmp_path):
    m = tiny(num_frames=4)
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "xclip" and (tmp_path / "model.safetensors").exists()
    hm = transformers.XCLIPModel.from_pretrained(tmp_path).eval()
    v, t = video(T=4), tokens()
    assert rel_err(_hf_logits(hm, v, t), logits(m, v, t)) < 1e-5
    # and back through our loader
    assert rel_err(logits(xclip.load_pretrained(tmp_path), v, t), logits(m, v, t)) < 1e-6


def test_hf_key_table_round_trip_uses_every_row():
    """One table serves both directions: a full-size model's keys go to HF and back unchanged, every row is used."""
    from xclip.model import hf

    with torch.device("meta"):
        sd = xclip.create_model("ViT-B/32", num_frames=8).state_dict()
    hf_sd = hf.to_hf_state_dict(sd)
    assert "vision_model.encoder.layers.11.message_attn.v_proj.bias" in hf_sd
    assert hf_sd["visual_projection.weight"].shape == sd["visual.proj"].shape[::-1]
    back = hf.from_hf_state_dict(hf_sd)
    assert set(back) == set(sd) and all(back[k].shape == sd[k].shape for k in sd)
    assert {hf._lookup(k, 0)[0][2] for k in sd} == {official for official, _, _ in hf.KEY_TABLE}
    with pytest.raises(ValueError, match="visual.bogus"):
        hf.to_hf_state_dict({"visual.bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"has only \['q'\]"):
        hf.from_hf_state_dict({"mit.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(2, 2)})


def test_hf_state_dict_file_also_loads(tmp_path):
    hm = _hf_model(seed=3)
    torch.save(hm.state_dict(), tmp_path / "hf_sd.pth")
    # a bare HF-layout state dict carries no config: heads are inferred as width // 64, so give them
    m = xclip.load_pretrained(tmp_path / "hf_sd.pth", vision_heads=3, mit_heads=2, prompt_heads=2,
                              transformer_heads=2)
    v, t = video(T=3), tokens(K=2)
    assert rel_err(logits(m, v, t), _hf_logits(hm, v, t)) < 1e-5


# --- official X-CLIP -----------------------------------------------------------------------------


class _Evil:
    def __reduce__(self):
        return (_mark_executed, ("pwned",))


EXECUTED = []


def _mark_executed(x):
    EXECUTED.append(x)
    return x


def as_yacs_cfgnode(cls):
    """Generator for a fixture: ``cls`` importable as ``yacs.config.CfgNode`` while the test runs (so
    ``torch.save`` pickles it under yacs' name); the real modules, if any, are put back afterwards."""
    pkg, mod = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    cls.__module__, cls.__qualname__ = "yacs.config", "CfgNode"
    mod.CfgNode, pkg.config = cls, mod
    saved = {k: sys.modules.get(k) for k in ("yacs", "yacs.config")}
    sys.modules["yacs"], sys.modules["yacs.config"] = pkg, mod
    yield cls
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v


@pytest.fixture
def fake_yacs():
    """A stand-in ``yacs.config.CfgNode`` (a dict subclass with private state), removed again before loading."""
    class CfgNode(dict):
        def __init__(self, d=None):
            super().__init__(d or {})
            self.__dict__["__immutable__"] = True
            self.__dict__["__deprecated_keys__"] = set()
            self.__dict__["__renamed_keys__"] = {}
            self.__dict__["__new_allowed__"] = False

    yield from as_yacs_cfgnode(CfgNode)


def test_official_checkpoint_with_yacs_config_and_no_code_execution(tmp_path, fake_yacs):
    m = official_tiny(num_frames=4)
    C = fake_yacs
    cfg = C({"MODEL": C({"ARCH": "ViT-B/32", "DROP_PATH_RATE": 0.2, "FIX_TEXT": True}),
             "DATA": C({"NUM_FRAMES": 4}), "TRAIN": C({"USE_CHECKPOINT": False})})
    ckpt = {"model": m.state_dict(), "config": cfg, "optimizer": {"state": {}}, "lr_scheduler": {},
            "max_accuracy": 81.5, "epoch": 29, "hook": _Evil()}
    torch.save(ckpt, tmp_path / "best.pth")
    del sys.modules["yacs"], sys.modules["yacs.config"]  # loading must work without yacs
    EXECUTED.clear()
    m2 = xclip.load_pretrained(tmp_path / "best.pth")
    assert EXECUTED == []  # the pickled callable was never run
    assert m2.config.drop_path == 0.2 and m2.config.freeze_text  # read from the yacs config
    v, t = video(T=4), tokens()
    torch.testing.assert_close(logits(m2.eval(), v, t), logits(m, v, t), rtol=0, atol=0)


def test_official_keys_in_state_dict_and_module_prefix(tmp_path):
    m = official_tiny(num_frames=4)
    sd = {"module." + k: v for k, v in m.state_dict().items()}  # a DDP-wrapped save
    assert "module.visual.transformer.resblocks.0.message_attn.in_proj_weight" in sd
    assert "module.prompts_generator.decoder.1.mlp.0.weight" in sd
    torch.save({"model": sd}, tmp_path / "ddp.pth")
    m2 = xclip.load_pretrained(tmp_path / "ddp.pth")
    v, t = video(T=4), tokens()
    torch.testing.assert_close(logits(m2, v, t), logits(m, v, t), rtol=0, atol=0)


def test_our_training_checkpoint_roundtrip_with_config_dict(tmp_path):
    m = tiny(num_frames=2, cross_frame=False, vision_heads=4, prompt_heads=4)
    save_checkpoint(m, tmp_path / "ckpt.pth", epoch=3)
    m2 = xclip.load_pretrained(tmp_path / "ckpt.pth")
    assert m2.config == m.config  # the stored config dict wins over inference (heads are not in the weights)
    v, t = video(T=2), tokens()
    torch.testing.assert_close(logits(m2, v, t), logits(m, v, t), rtol=0, atol=0)


def test_mismatch_lists_missing_unexpected_and_shapes(tmp_path):
    sd = dict(official_tiny(num_frames=4).state_dict())
    sd.pop("visual.transformer.resblocks.1.message_ln.weight")
    sd["visual.transformer.resblocks.0.attn.bogus"] = torch.zeros(3)
    sd["prompts_generator.decoder.0.cross_attn.q_proj.weight"] = torch.zeros(32, 31)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointMismatchError) as e:
        xclip.load_pretrained(tmp_path / "bad.pth")
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "missing keys (1): visual.transformer.resblocks.1.message_ln.weight" in msg
    assert "unexpected keys (1): visual.transformer.resblocks.0.attn.bogus" in msg
    assert "prompts_generator.decoder.0.cross_attn.q_proj.weight (checkpoint (32, 31), model (128, 128))" in msg


def test_unrecognised_and_missing_files(tmp_path):
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="unrecognised checkpoint"):
        xclip.load_pretrained(tmp_path / "x.pth")
    with pytest.raises(ValueError, match="not found"):
        xclip.load_pretrained(tmp_path / "nope.pth")
    (tmp_path / "d").mkdir()
    with pytest.raises(ValueError, match="config.json"):
        xclip.load_pretrained(tmp_path / "d")


def test_num_frames_interpolates_mit_positions(tmp_path):
    m = official_tiny(num_frames=4)
    torch.save({"model": m.state_dict()}, tmp_path / "x.pth")
    with pytest.warns(UserWarning, match="interpolated from 4 to 7 frames"):
        m7 = xclip.load_pretrained(tmp_path / "x.pth", num_frames=7)
    pos4, pos7 = m.mit.positional_embedding.detach(), m7.mit.positional_embedding.detach()
    assert pos7.shape == (1, 7, 128)
    torch.testing.assert_close(pos7[:, 0], pos4[:, 0])
    torch.testing.assert_close(pos7[:, -1], pos4[:, -1])
    torch.testing.assert_close(pos7[:, 2], pos4[:, 1])  # new frame j sits at old position j * 3 / 6
    torch.testing.assert_close(pos7[:, 1], (pos4[:, 0] + pos4[:, 1]) / 2)
    assert logits(m7, video(T=7), tokens()).shape == (2, 3)


# --- OpenAI CLIP ----------------------------------------------------------------------------------


def _clip_state_dict(seed=0):
    """A tiny CLIP in the OpenAI key layout: the two towers of an X-CLIP without messages, MIT or prompts."""
    m = official_tiny(num_frames=1, cross_frame=False, seed=seed)  # CLIP files carry no head counts either
    sd = {k: v for k, v in m.state_dict().items() if not k.startswith(("prompts_",))}
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in sd and "token_embedding.weight" in sd
    return m, sd


def _check_from_clip(x, src, sd):
    own = x.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)
    assert "visual.transformer.resblocks.0.message_fc.weight" in own and "mit.positional_embedding" in own
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(x.encode_text(t), src.encode_text(t), rtol=0, atol=0)
        assert x(video(T=8), t).shape == (2, 3)


def test_openai_clip_state_dict(tmp_path):
    src, sd = _clip_state_dict()
    torch.save(sd, tmp_path / "clip.pt")
    x = xclip.load_pretrained(tmp_path / "clip.pt").set_attn_backend("torch").eval()
    assert x.config.num_frames == 8 and x.config.cross_frame and x.config.vision_width == 128
    _check_from_clip(x, src, sd)
    sd2 = dict(sd)
    sd2["visual.proj"] = torch.zeros(64, 31)
    torch.save(sd2, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError, match=r"visual.proj \(checkpoint \(64, 31\)"):
        xclip.load_pretrained(tmp_path / "bad.pt")


def _holder(sd: dict) -> nn.Module:
    root = nn.Module()
    for key, value in sd.items():
        *path, leaf = key.split(".")
        mod = root
        for name in path:
            if not hasattr(mod, name):
                mod.add_module(name, nn.Module())
            mod = getattr(mod, name)
        if value.is_floating_point():
            mod.register_parameter(leaf, nn.Parameter(value.clone()))
        else:
            mod.register_buffer(leaf, value.clone())
    return root


class _TinyCLIPScript(nn.Module):
    def __init__(self, sd):
        super().__init__()
        holder = _holder(sd)
        for name, child in holder.named_children():
            self.add_module(name, child)
        for name, p in holder.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in holder.named_buffers(recurse=False):
            self.register_buffer(name, b)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.token_embedding.weight[text].sum(1) @ self.text_projection[: self.ln_final.weight.shape[0]]


def test_openai_clip_torchscript_archive(tmp_path):
    src, sd = _clip_state_dict(seed=4)
    extras = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16), "vocab_size": torch.tensor(500)}
    scripted = torch.jit.script(_TinyCLIPScript({**sd, **extras}))
    scripted.save(str(tmp_path / "ViT-tiny.pt"))
    x = xclip.load_pretrained(tmp_path / "ViT-tiny.pt").set_attn_backend("torch").eval()
    _check_from_clip(x, src, sd)


def test_openai_clip_traced_archive_and_what_is_read(tmp_path):
    """A traced archive reads too; its TorchScript code is never compiled (the weights come from data.pkl)."""
    from xclip.model.checkpoints import load_checkpoint_file

    src, sd = _clip_state_dict(seed=6)
    extras = {"input_resolution": torch.tensor(32), "context_length": torch.tensor(16), "vocab_size": torch.tensor(500)}
    traced = torch.jit.trace(_TinyCLIPScript({**sd, **extras}), (torch.zeros(2, 3, dtype=torch.long),))
    traced.save(str(tmp_path / "traced.pt"))
    raw = load_checkpoint_file(tmp_path / "traced.pt")
    assert set(raw) == set(traced.state_dict())  # parameters and buffers, as torch.jit.load's state_dict
    for k, v in traced.state_dict().items():
        torch.testing.assert_close(raw[k], v, rtol=0, atol=0, msg=k)
    x = xclip.load_pretrained(tmp_path / "traced.pt").set_attn_backend("torch").eval()
    _check_from_clip(x, src, sd)


# --- convert CLI ---------------------------------------------------------------------------------


def test_convert_cli_roundtrip(tmp_path, capsys):
    from xclip.cli import main

    m = official_tiny(num_frames=4)
    torch.save({"model": m.state_dict()}, tmp_path / "official.pth")
    assert main(["convert", str(tmp_path / "official.pth"), str(tmp_path / "hf"), "--to", "hf"]) == 0
    assert "converted" in capsys.readouterr().out
    hm = transformers.XCLIPModel.from_pretrained(tmp_path / "hf").eval()
    v, t = video(T=4), tokens()
    assert rel_err(_hf_logits(hm, v, t), logits(m, v, t)) < 1e-5
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "back.pth"), "--to", "official"]) == 0
    back = torch.load(tmp_path / "back.pth", weights_only=True)
    assert set(back["model"]) == set(m.state_dict())
    for k, val in m.state_dict().items():
        torch.testing.assert_close(back["model"][k], val, rtol=0, atol=0, msg=k)
    assert main(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "o"), "--to", "hf"]) == 2


# --- the restricted reader reads what torch.load reads ---------------------------------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_restricted_reader_matches_torch_load(tmp_path, zip_format):
    import random
    from collections import OrderedDict

    import numpy as np

    from xclip.model.checkpoints import load_checkpoint_file

    base = torch.randn(6, 5)
    sd = tiny(num_frames=2).state_dict()  # an OrderedDict with _metadata
    obj = {
        "model": sd,
        "views": [base, base[1:4, ::2], base.t()],  # shared storage, offsets, strides
        "dtypes": {str(d): torch.arange(7).to(d) for d in (torch.float16, torch.bfloat16, torch.float64, torch.int8,
                                                           torch.int32, torch.int64, torch.bool, torch.uint8)},
        "empty": torch.zeros(0, 3),
        "param": nn.Parameter(torch.ones(2)),
        "rng": torch.get_rng_state(),
        "np_state": np.random.default_rng(0).bit_generator.state["state"]["state"],
        "np_array": np.arange(6, dtype=np.float32).reshape(2, 3),
        "np_scalar": np.float64(81.25),
        "py_random": random.Random(0).getstate(),
        "misc": (None, True, "text", b"bytes", 3.5, {1, 2}, OrderedDict(a=1)),
    }
    torch.save(obj, tmp_path / "rich.pth", _use_new_zipfile_serialization=zip_format)
    ours = load_checkpoint_file(tmp_path / "rich.pth")
    ref = torch.load(tmp_path / "rich.pth", weights_only=False)

    def same(a, b, where="obj"):
        assert type(a) is type(b) or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)), where
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), where
            assert torch.equal(a, b), where
        elif isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and np.array_equal(a, b), where
        elif isinstance(a, dict):
            assert list(a) == list(b), where
            for k in a:
                same(a[k], b[k], f"{where}[{k!r}]")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, where

    same(ours, ref)
    assert getattr(ours["model"], "_metadata", None) == getattr(ref["model"], "_metadata", None)
    v = ours["views"]
    assert v[1].untyped_storage().data_ptr() == v[0].untyped_storage().data_ptr()  # still one storage
