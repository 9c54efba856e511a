"""Hostile and broken checkpoints.

- Marker files: for every checkpoint format (TorchScript archive, torch.save zip and legacy pickle, official
  .pth with a yacs-like config, Hugging Face pytorch_model.bin) a payload that creates a file when the file is
  loaded the ordinary way (checked first, so each test can fail) creates nothing through xclip.load_pretrained.
- Corrupt files: each ends in one xclip.CheckpointError (a ValueError) naming the file and what is wrong,
  from load_pretrained and as one line with exit 2 from the CLI.
- Small text vocabularies: tokens past the vocabulary raise a ValueError naming the checkpoint, its
  vocabulary size and the largest token id.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Tuple

import pytest
import torch
from torch import Tensor, nn

import xclip
from xclip import CheckpointError
from xclip.model.checkpoints import save_checkpoint

from test_checkpoints import _holder, as_yacs_cfgnode
from test_model import tiny, tokens, video


def tiny_bare(**kw):
    """A tiny model whose head counts are the ones a bare state dict implies (width // 64 = 1):
    a checkpoint without a config carries no head count, so the loader infers it."""
    return tiny(**kw, transformer_heads=1, vision_heads=None, mit_heads=None, prompt_heads=None)

REPO = Path(__file__).resolve().parents[2]
MARKER: list[str | None] = [None]


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    MARKER[0] = str(path)
    yield path
    MARKER[0] = None


def _touch(path: str) -> str:
    Path(path).write_text("code from the checkpoint ran")
    return path


class Payload:
    """Unpickled the ordinary way, this creates the marker file."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (_touch, (self.path,))


class SystemPayload(Payload):
    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _ordinary_load_creates(path: Path, marker: Path, loader) -> None:
    """The hostile file is live: the ordinary loader creates the marker (then it is removed again)."""
    assert not marker.exists()
    try:
        loader(path)
    except Exception:
        pass
    assert marker.exists(), "the test's payload did not run under the ordinary loader: the test proves nothing"
    marker.unlink()


def _full_torch_load(p):
    return torch.load(p, weights_only=False)


def _clip_state_dict(seed=0):
    m = tiny_bare(num_frames=1, cross_frame=False, seed=seed)
    return m, {k: v for k, v in m.state_dict().items() if not k.startswith("prompts_")}


# --- TorchScript ---------------------------------------------------------------------------------

@torch.library.custom_op("xclip_test::touch_marker", mutates_args=())
def touch_marker(x: Tensor) -> Tensor:
    if MARKER[0]:
        _touch(MARKER[0])
    return x.clone()


class _ScriptedHook(nn.Module):
    """A module whose TorchScript ``__setstate__`` (run by torch.jit.load) prints and writes the marker file."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[Tensor, bool]:
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[Tensor, bool]) -> None:
        self.x = torch.ops.xclip_test.touch_marker(state[0])
        self.training = state[1]
        print("XCLIP-TEST: scripted __setstate__ ran")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.x


class _EvilCLIP(nn.Module):
    """OpenAI-CLIP key names plus a scripted hook module and a plain tensor attribute (not a weight)."""

    def __init__(self, sd) -> None:
        super().__init__()
        for name, child in _holder(sd).named_children():
            self.add_module(name, child)
        for name, p in _holder(sd).named_parameters(recurse=False):
            self.register_parameter(name, p)
        self.hook = _ScriptedHook()
        self.attn_mask = torch.ones(2, 2)  # an attribute, not a parameter or buffer: must not become a key

    def forward(self, text: Tensor) -> Tensor:
        x = self.token_embedding.weight[text].sum(1) @ self.text_projection[: self.ln_final.weight.shape[0]]
        return self.hook(x) + self.attn_mask.sum()


def test_torchscript_setstate_never_runs(tmp_path, marker, capfd):
    src, sd = _clip_state_dict(seed=5)
    path = tmp_path / "evil_clip.pt"
    torch.jit.script(_EvilCLIP(sd)).save(str(path))
    _ordinary_load_creates(path, marker, torch.jit.load)
    assert "scripted __setstate__ ran" in capfd.readouterr().out
    x = xclip.load_pretrained(path)  # neutralised: the weights load, the hook module is an inert placeholder
    assert not marker.exists()
    assert "scripted __setstate__ ran" not in capfd.readouterr().out
    own = x.state_dict()
    for k, v in sd.items():
        torch.testing.assert_close(own[k], v, rtol=0, atol=0, msg=k)


def test_torchscript_loader_never_calls_jit_load(tmp_path, monkeypatch):
    _, sd = _clip_state_dict()
    path = tmp_path / "clip.pt"
    torch.jit.script(_EvilCLIP(sd)).save(str(path))

    def forbidden(*a, **k):
        raise AssertionError("torch.jit.load called on a user file")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    monkeypatch.setattr(torch.jit._serialization, "load", forbidden)
    monkeypatch.setattr(torch._C, "import_ir_module", forbidden)
    xclip.load_pretrained(path)


class _PrintingHook(nn.Module):
    """The issue's repro: a scripted ``__setstate__`` that prints (needs no custom op, so it runs anywhere)."""

    def __init__(self) -> None:
        super().__init__()
        self.x = torch.zeros(1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[Tensor, bool]:
        return (self.x, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[Tensor, bool]) -> None:
        self.x = state[0]
        self.training = state[1]
        print("XCLIP-TEST: scripted __setstate__ ran")

    def forward(self, x: Tensor) -> Tensor:
        return x + self.x


def test_torchscript_setstate_never_runs_through_the_cli(tmp_path):
    _, sd = _clip_state_dict(seed=7)
    evil = _EvilCLIP(sd)
    evil.hook = _PrintingHook()
    path = tmp_path / "evil.pt"
    torch.jit.script(evil).save(str(path))
    probe = subprocess.run([sys.executable, "-c", f"import torch; torch.jit.load({str(path)!r})"],
                           capture_output=True, text=True, timeout=300)
    assert "scripted __setstate__ ran" in probe.stdout  # live under torch.jit.load
    r = _cli("convert", str(path), str(tmp_path / "out.pth"), "--to", "official")
    assert r.returncode == 0, r.stderr
    assert "scripted __setstate__ ran" not in r.stdout + r.stderr and "converted" in r.stdout


# --- torch.save pickles (zip and legacy), official .pth with a yacs-like config -------------------


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload", [Payload, SystemPayload], ids=["python", "os.system"])
def test_pickle_reduce_payload_never_runs(tmp_path, marker, zip_format, payload):
    m = tiny_bare(num_frames=2)
    path = tmp_path / "evil.pth"
    torch.save({"model": m.state_dict(), "epoch": 1, "hook": payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    _ordinary_load_creates(path, marker, _full_torch_load)
    x = xclip.load_pretrained(path)  # the payload becomes an inert placeholder; the weights load
    assert not marker.exists()
    v, t = video(T=2), tokens()
    with torch.no_grad():
        torch.testing.assert_close(x.set_attn_backend("torch")(v, t), m(v, t), rtol=0, atol=0)


def test_payload_as_a_weight_is_refused(tmp_path, marker):
    sd = dict(tiny(num_frames=2).state_dict())
    sd["logit_scale"] = Payload(marker)
    torch.save({"model": sd}, tmp_path / "evil.pth")
    _ordinary_load_creates(tmp_path / "evil.pth", marker, _full_torch_load)
    with pytest.raises(CheckpointError, match="not tensors: \\['logit_scale'\\]"):
        xclip.load_pretrained(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.fixture
def hostile_yacs(marker):
    """A ``yacs.config.CfgNode`` look-alike whose pickled state carries payloads; removed before loading."""
    class CfgNode(dict):
        def __init__(self, d=None):
            super().__init__(d or {})
            self.__dict__["__immutable__"] = Payload(marker)  # in the BUILD state, as yacs' private flags are

    yield from as_yacs_cfgnode(CfgNode)


def test_official_checkpoint_with_hostile_yacs_config(tmp_path, marker, hostile_yacs):
    C = hostile_yacs
    m = tiny_bare(num_frames=4)
    cfg = C({"MODEL": C({"DROP_PATH_RATE": 0.3, "FIX_TEXT": False, "HOOK": SystemPayload(marker)}),
             "DATA": C({"NUM_FRAMES": 4})})
    path = tmp_path / "best.pth"
    torch.save({"model": m.state_dict(), "config": cfg, "epoch": 3}, path)
    _ordinary_load_creates(path, marker, _full_torch_load)
    del sys.modules["yacs"], sys.modules["yacs.config"]
    x = xclip.load_pretrained(path)
    assert not marker.exists()
    assert x.config.drop_path == 0.3 and not x.config.freeze_text  # the config's plain values are still read


def test_pickle_cannot_monkeypatch_allowed_globals(tmp_path):
    """BUILD on an allow-listed function (setting its attributes for the whole process) is refused."""
    target = torch.serialization._get_layout
    name = target.__name__
    # GLOBAL torch.serialization._get_layout; (None, {"__name__": "pwned"}); BUILD; STOP
    data = (b"\x80\x02ctorch.serialization\n_get_layout\nN}X\x08\x00\x00\x00__name__X\x05\x00\x00\x00pwned"
            b"s\x86b.")
    assert pickle.loads(data).__name__ == "pwned"  # what an ordinary unpickler does
    target.__name__ = name
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", data)
    with pytest.raises(CheckpointError, match="refused"):
        xclip.load_pretrained(path)
    assert target.__name__ == name


# --- Hugging Face -------------------------------------------------------------------------------


def test_hf_pytorch_model_bin_payload_is_refused(tmp_path, marker):
    d = tmp_path / "hf"
    tiny(num_frames=3).save_pretrained(d, safe_serialization=False)
    sd = torch.load(d / "pytorch_model.bin", weights_only=True)
    torch.save({**sd, "hook": Payload(marker)}, d / "pytorch_model.bin")
    _ordinary_load_creates(d / "pytorch_model.bin", marker, _full_torch_load)
    with pytest.raises(CheckpointError) as e:
        xclip.load_pretrained(d)
    assert str(d / "pytorch_model.bin") in str(e.value) and "expected a dict of tensors" in str(e.value)
    assert not marker.exists()


# --- corrupt checkpoints --------------------------------------------------------------------------


def _valid_pth(path):
    save_checkpoint(tiny(num_frames=2), path)
    return path


def _hf_dir(d):
    tiny(num_frames=2).save_pretrained(d)
    return d


def _case(tmp_path, kind):
    """(path to load, file the message must name, phrase the message must contain)."""
    p = tmp_path / "ckpt.pth"
    if kind == "zero-byte":
        p.write_bytes(b"")
        return p, p, "empty file (0 bytes)"
    if kind == "zero-byte-safetensors":
        p = tmp_path / "m.safetensors"
        p.write_bytes(b"")
        return p, p, "empty file"
    if kind == "truncated-zip":
        data = _valid_pth(p).read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return p, p, "not a readable zip archive"
    if kind == "random-bytes":
        p.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
        return p, p, "not a PyTorch checkpoint"
    if kind == "text-file":
        p.write_text("1.5 2.5\nnot a checkpoint\n")
        return p, p, "not a PyTorch checkpoint"
    if kind == "zip-not-torch":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("readme.txt", "hello")
        return p, p, "not a PyTorch checkpoint: expected one <archive>/data.pkl"
    if kind == "zip-missing-tensor-data":
        data = _valid_pth(p)
        with zipfile.ZipFile(data) as z:
            items = [(n, z.read(n)) for n in z.namelist() if not n.endswith("/data/0")]
        with zipfile.ZipFile(p, "w") as z:
            for n, b in items:
                z.writestr(n, b)
        return p, p, "missing tensor data"
    if kind == "not-a-dict":
        torch.save([torch.zeros(2)], p)
        return p, p, "expected a state dict or a dict with 'model', got list"
    if kind == "unrecognised-keys":
        torch.save({"foo.weight": torch.zeros(2)}, p)
        return p, p, "unrecognised checkpoint"
    if kind == "missing-file":
        return tmp_path / "nope.pth", tmp_path / "nope.pth", "not found"
    if kind == "corrupt-safetensors":
        d = _hf_dir(tmp_path / "hf")
        st = d / "model.safetensors"
        b = bytearray(st.read_bytes())
        b[8:40] = b"\xff" * 32  # inside the JSON header
        st.write_bytes(bytes(b))
        return d, st, "corrupt safetensors file"
    if kind == "truncated-safetensors":
        d = _hf_dir(tmp_path / "hf")
        st = d / "model.safetensors"
        st.write_bytes(st.read_bytes()[:-100])
        return d, st, "corrupt safetensors file"
    if kind == "config-json-list":
        d = _hf_dir(tmp_path / "hf")
        (d / "config.json").write_text("[1, 2, 3]")
        return d, d / "config.json", "expected a JSON object, got a JSON list"
    if kind == "config-json-invalid":
        d = _hf_dir(tmp_path / "hf")
        (d / "config.json").write_text('{"model_type": "xclip",')
        return d, d / "config.json", "invalid JSON"
    if kind == "config-subconfig-list":
        d = _hf_dir(tmp_path / "hf")
        cfg = json.loads((d / "config.json").read_text())
        cfg["vision_config"] = [1]
        (d / "config.json").write_text(json.dumps(cfg))
        return d, d / "config.json", "vision_config must be a JSON object"
    if kind == "config-bad-value":
        d = _hf_dir(tmp_path / "hf")
        cfg = json.loads((d / "config.json").read_text())
        cfg["text_config"]["hidden_size"] = "wide"
        (d / "config.json").write_text(json.dumps(cfg))
        return d, d / "config.json", "invalid X-CLIP config"
    if kind == "hf-no-weights":
        d = _hf_dir(tmp_path / "hf")
        (d / "model.safetensors").unlink()
        return d, d, "no model.safetensors"
    if kind == "hf-no-config":
        d = _hf_dir(tmp_path / "hf")
        (d / "config.json").unlink()
        return d, d, "without config.json"
    raise AssertionError(kind)


CASES = ["zero-byte", "zero-byte-safetensors", "truncated-zip", "random-bytes", "text-file", "zip-not-torch",
         "zip-missing-tensor-data", "not-a-dict", "unrecognised-keys", "missing-file", "corrupt-safetensors",
         "truncated-safetensors", "config-json-list", "config-json-invalid", "config-subconfig-list",
         "config-bad-value", "hf-no-weights", "hf-no-config"]


@pytest.mark.parametrize("kind", CASES)
def test_corrupt_checkpoint_is_one_checkpoint_error(tmp_path, kind):
    path, culprit, phrase = _case(tmp_path, kind)
    with pytest.raises(CheckpointError) as e:
        xclip.load_pretrained(path)
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert msg.startswith(f"{culprit}: "), msg
    assert phrase in msg, msg
    assert "\n" not in msg and e.value.path == str(culprit)


def _cli(*args, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "xclip", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("kind", ["zero-byte", "truncated-zip", "random-bytes", "corrupt-safetensors",
                                  "config-json-list", "config-json-invalid"])
def test_corrupt_checkpoint_through_the_cli(tmp_path, kind):
    path, culprit, phrase = _case(tmp_path, kind)
    r = _cli("convert", str(path), str(tmp_path / "out"), "--to", "hf")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(culprit) in lines[0] and phrase in lines[0], r.stderr


def test_safetensors_file_under_another_name(tmp_path):
    from safetensors.torch import save_file

    m = tiny(num_frames=2)
    m.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "model.safetensors").rename(tmp_path / "weights.pth")
    x = xclip.load_pretrained(tmp_path / "weights.pth", vision_heads=1, mit_heads=1, prompt_heads=1,
                              transformer_heads=2)
    for k, v in m.state_dict().items():
        torch.testing.assert_close(x.state_dict()[k], v, rtol=0, atol=0, msg=k)
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.bin"))
    with pytest.raises(CheckpointError, match="other.bin: unrecognised checkpoint"):
        xclip.load_pretrained(tmp_path / "other.bin")


@pytest.mark.parametrize("bad", [0, -2, 2.5, "8", True])
def test_num_frames_argument_is_checked(tmp_path, bad):
    path = _valid_pth(tmp_path / "ok.pth")
    with pytest.raises(ValueError, match=f"num_frames must be a positive integer or None, got {bad!r}"):
        xclip.load_pretrained(path, num_frames=bad)


# --- text vocabulary smaller than the tokenizer's ---------------------------------------------------


def test_tokens_beyond_a_small_vocabulary(tmp_path):
    m = tiny(num_frames=2)  # vocab_size=500: the tiny test models' own token ids fit
    path = tmp_path / "small_vocab.pth"
    save_checkpoint(m, path)
    x = xclip.load_pretrained(path).set_attn_backend("torch")
    x.encode_text(tokens())  # ids < 500: fine
    t = xclip.tokenize(["a person juggling"], context_length=16)
    assert int(t.max()) == 49407
    for fn in (lambda: x.encode_text(t), lambda: x(video(T=2), t)):
        with pytest.raises(ValueError) as e:
            fn()
        msg = str(e.value)
        assert str(path) in msg and "vocabulary of 500 ids" in msg and "largest id in these tokens is 49407" in msg
    neg = tokens()
    neg[0, 3] = -1
    with pytest.raises(ValueError, match="token id -1 is outside the text vocabulary of 500 ids"):
        x.encode_text(neg)


def test_small_vocabulary_checkpoint_through_predict(tmp_path):
    from video_utils import make_video

    cfg = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
               transformer_width=32, transformer_heads=2, transformer_layers=1, vision_heads=2, mit_heads=2,
               prompt_heads=2, vocab_size=300)
    torch.manual_seed(0)
    ckpt = tmp_path / "small_vocab.pth"
    save_checkpoint(xclip.create_model(cfg, num_frames=4).eval(), ckpt)
    vid = make_video(tmp_path / "clip.mp4", num_frames=8, height=36, width=48)
    labels = tmp_path / "labels.csv"
    labels.write_text("id,name\n0,juggling\n1,swimming\n")
    r = _cli("predict", vid, "--checkpoint", str(ckpt), "--labels", str(labels), "--device", "cpu",
             "--num-workers", "0", "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "index out of range" not in r.stderr
    err = r.stderr.strip().splitlines()[-1]
    assert str(ckpt) in err and "vocabulary of 300 ids" in err and "49407" in err, r.stderr


def _touch_on_backward(path, grad):
    _touch(path)


class _HookedTensor:
    """Pickles as a tensor whose backward hook (called on every backward through it) creates the marker."""

    def __init__(self, t, path) -> None:
        self.t, self.path = t, str(path)

    def __reduce__(self):
        import functools
        from collections import OrderedDict

        hooks = OrderedDict({0: functools.partial(_touch_on_backward, self.path)})
        return (torch._utils._rebuild_tensor_v2,
                (self.t._typed_storage(), 0, tuple(self.t.shape), self.t.stride(), True, hooks))


def test_pickled_backward_hooks_are_dropped(tmp_path, marker):
    from xclip.model.checkpoints import load_checkpoint_file

    torch.save({"w": _HookedTensor(torch.ones(3), marker)}, tmp_path / "hooked.pth")
    _ordinary_load_creates(tmp_path / "hooked.pth", marker,
                           lambda p: (torch.load(p, weights_only=False)["w"] * 2).sum().backward())
    w = load_checkpoint_file(tmp_path / "hooked.pth")["w"]
    assert not w._backward_hooks
    (w * 2).sum().backward()
    assert not marker.exists()
