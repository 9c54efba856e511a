"""Every bad input through the real `xclip` CLI (a subprocess): a non-zero exit, one line naming the file or
argument, and no traceback; `--debug` / XCLIP_DEBUG=1 bring the traceback back. Plus the silent surprises of
issue 13: NaN weights, the checkpoint's preprocessing (crop_pct), architecture and CLIP-init warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from train_utils import REPO, make_tiny_data, subprocess_env, tiny_config, write_config
from video_utils import make_video

TINY = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
            transformer_width=32, transformer_heads=2, transformer_layers=1, num_frames=4, vision_heads=2,
            mit_heads=2, prompt_heads=2)


def xclip(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "xclip", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env={**subprocess_env(), **(env or {})}, timeout=timeout)


def assert_user_error(r, *names):
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    err = [line for line in r.stderr.splitlines() if ": error: " in line]
    assert len(err) == 1, r.stderr[-2000:]
    for n in names:
        assert str(n) in err[0], (n, err[0])
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import xclip
    from xclip.model.checkpoints import save_checkpoint

    d = tmp_path_factory.mktemp("usererr")
    torch.manual_seed(0)
    model = xclip.create_model(dict(TINY), num_frames=None).eval()
    save_checkpoint(model, d / "tiny.pth")
    nan = xclip.create_model(dict(TINY), num_frames=None)
    with torch.no_grad():
        nan.visual.proj.fill_(float("nan"))
    save_checkpoint(nan, d / "nan.pth")
    video = make_video(d / "clip.mp4", num_frames=12, height=36, width=48, seed=0)
    data = str(d / "data")
    make_tiny_data(data)
    cfg = tiny_config(data, str(d / "run"), epochs=1)
    return dict(d=d, ckpt=d / "tiny.pth", nan=d / "nan.pth", video=video, data=data,
                cfg=write_config(cfg, str(d / "cfg.yaml")))


# ------------------------------------------------------------------ predict arguments
@pytest.mark.parametrize("extra, names", [
    (["--frames", "0"], ["num_frames", "0"]),
    (["--template", "{1}"], ["--template", "{1}"]),
    (["--device", "bogus"], ["bogus"]),
    (["--json", "/no/such/folder/out.json"], ["--json", "/no/such/folder"]),
    (["--top-k", "0"], ["--top-k"]),
    (["--views", "0x1"], ["--views"]),
    (["--crop-pct", "0"], ["crop_pct"]),
])
def test_predict_bad_arguments(files, extra, names):
    r = xclip("predict", files["video"], "--checkpoint", files["ckpt"], "--labels", "a,b", "--no-progress", *extra)
    assert_user_error(r, *names)
    assert "%" not in r.stdout  # nothing predicted before the argument was refused


def test_predict_missing_labels_file_and_checkpoint(files):
    assert_user_error(xclip("predict", files["video"], "--checkpoint", files["ckpt"], "--labels",
                            files["d"] / "nope.csv"), "nope.csv")
    assert_user_error(xclip("predict", files["video"], "--checkpoint", files["d"] / "gone.pth", "--labels", "a,b"),
                      "gone.pth")


def test_nan_weights_are_refused(files):
    r = xclip("predict", files["video"], "--checkpoint", files["nan"], "--labels", "a,b", "--no-progress")
    line = assert_user_error(r, "nan.pth", "NaN")
    assert "nan%" not in r.stdout and "visual.proj" in line


def test_debug_switch_shows_the_traceback(files):
    args = ("predict", files["video"], "--checkpoint", files["ckpt"], "--labels", "a,b", "--template", "{1}")
    for r in (xclip("--debug", *args), xclip(*args, env={"XCLIP_DEBUG": "1"})):
        assert r.returncode != 0 and "Traceback" in r.stderr and "{1}" in r.stderr


# ------------------------------------------------------------------ train: config, lists, labels
def _bad_list(files, name, content: bytes):
    p = files["d"] / name
    p.write_bytes(content)
    return p


def test_train_label_id_beyond_the_labels_stops_before_the_first_step(files, tmp_path):
    good = open(os.path.join(files["data"], "train.txt")).read()
    bad = _bad_list(files, "bad_label.txt", (good + "videos/red_circle_left/train_000.mp4 99\n").encode())
    r = xclip("train", files["cfg"], f"data.train_list={bad}", f"output={tmp_path / 'o1'}")
    assert_user_error(r, "bad_label.txt", "line 9", "99", "8 class")
    assert not [f for f in os.listdir(tmp_path / "o1") if f.endswith(".pth")]
    # a label set smaller than the list's ids (data.labels=a,b), and a bad id in the val list
    assert_user_error(xclip("train", files["cfg"], "data.labels=a,b", f"output={tmp_path / 'o2'}"),
                      "train.txt", "line 3", "label id 2", "'a,b'")
    assert_user_error(xclip("train", files["cfg"], f"data.val_list={bad}", f"output={tmp_path / 'o3'}"),
                      "data.val_list", "bad_label.txt", "line 9")


@pytest.mark.parametrize("case", ["non_utf8", "empty", "missing", "no_label", "resume", "section", "unwritable"])
def test_train_bad_inputs(files, tmp_path, case):
    contents = {"non_utf8": b"videos/caf\xe9.mp4 0\n", "empty": b"# nothing\n", "no_label": b"videos/a.mp4\n"}
    lst = _bad_list(files, f"{case}.txt", contents[case]) if case in contents else None
    over, names = {
        "non_utf8": ([f"data.train_list={lst}"], ["non_utf8.txt", "line 1", "UTF-8"]),
        "empty": ([f"data.train_list={lst}"], ["empty.txt", "no samples"]),
        "missing": ([f"data.train_list={files['d'] / 'absent.txt'}"], ["absent.txt"]),
        "no_label": ([f"data.train_list={lst}"], ["no_label.txt", "line 1"]),
        "resume": ([f"train.resume={files['d'] / 'nothere.pth'}"], ["nothere.pth"]),
        "section": (["train=5"], ["train=5"]),
        "unwritable": ([f"output={files['ckpt']}/sub"], [str(files["ckpt"])]),
    }[case]
    if case != "unwritable":
        over = over + [f"output={tmp_path / 'o'}"]
    assert_user_error(xclip("train", files["cfg"], *over), *names)


def test_non_utf8_labels_file(files):
    lab = _bad_list(files, "labels_latin1.csv", b"id,name\n0,caf\xe9\n1,tea\n")
    assert_user_error(xclip("predict", files["video"], "--checkpoint", files["ckpt"], "--labels", lab),
                      "labels_latin1.csv", "line 2", "UTF-8")


def test_convert_and_eval_bad_inputs(files, tmp_path):
    assert_user_error(xclip("convert", files["d"] / "none.pth", tmp_path / "o", "--to", "hf"), "none.pth")
    assert_user_error(xclip("eval", files["cfg"], "--checkpoint", files["ckpt"], "--device", "bogus"), "bogus")
    good = open(os.path.join(files["data"], "val.txt")).read()
    bad = _bad_list(files, "bad_test.txt", (good + "videos/x.mp4 12\n").encode())
    assert_user_error(xclip("eval", files["cfg"], "--checkpoint", files["ckpt"], "--list", bad, "--output",
                            tmp_path / "ev"), "bad_test.txt", "line 9", "12")


def test_demo_typo_fails_before_any_data_is_made(tmp_path):
    r = xclip("demo", "--output", tmp_path / "demo", "train=5")
    assert_user_error(r, "train")
    assert not (tmp_path / "demo" / "data").exists(), "the demo generated its videos before reading its overrides"
    r = xclip("demo", "--output", tmp_path / "demo", "train.epocs=3")
    assert_user_error(r, "train.epocs", "epochs")


# ------------------------------------------------------------------ the checkpoint's preprocessing
def test_predict_uses_the_crop_pct_a_checkpoint_was_trained_with(tmp_path):
    """A run trained with data.crop_pct=1.0: `xclip predict` without --crop-pct preprocesses with 1.0."""
    from xclip.apps.predict import main
    from xclip.data import VideoDataset
    from xclip.engine.checkpoint import list_checkpoints
    from xclip.model import load_pretrained, tokenize

    data = str(tmp_path / "data")
    make_tiny_data(data)
    cfg = tiny_config(data, str(tmp_path / "run"), epochs=1)
    cfg["data"]["crop_pct"] = 1.0
    cfg["data"]["text_template"] = "a clip of {}"
    r = xclip("train", write_config(cfg, str(tmp_path / "c.yaml")))
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = list_checkpoints(str(tmp_path / "run"))[-1][2]
    model = load_pretrained(ckpt).eval()
    assert model.preprocessing["crop_pct"] == 1.0 and model.preprocessing["text_template"] == "a clip of {}"
    video = make_video(tmp_path / "v.mp4", num_frames=10, height=24, width=40, seed=1)
    names = ["red circle moving left", "blue square moving up", "red square moving up"]

    def expected(crop_pct, template):
        ds = VideoDataset([(video, 0)], None, num_frames=4, mode="test", input_size=16, crop_pct=crop_pct)
        with torch.no_grad():
            return model(ds[0]["video"], tokenize([template.format(n) for n in names],
                                                  context_length=model.config.context_length)).softmax(-1)[0]

    def predicted(*flags):
        out = tmp_path / "p.json"
        assert main([video, "--checkpoint", ckpt, "--labels", ",".join(names), "--top-k", "3", "--json", str(out),
                     "--no-progress", "--device", "cpu", *flags]) == 0
        top = json.load(open(out))[0]["top_k"]
        return torch.tensor([next(t["prob"] for t in top if t["label"] == n) for n in names])

    stored, default = expected(1.0, "a clip of {}"), expected(0.875, "a clip of {}")
    assert (stored - default).abs().max() > 1e-4  # the two crops differ: the test can tell them apart
    assert torch.allclose(predicted(), stored, atol=1e-5)
    assert torch.allclose(predicted("--crop-pct", "0.875"), default, atol=1e-5)  # a flag overrides it


def test_preprocessing_survives_save_pretrained_and_hf_still_loads(tmp_path):
    import xclip
    from xclip.model.checkpoints import save_checkpoint

    model = xclip.create_model(dict(TINY), num_frames=None)
    model.preprocessing = {"input_size": 32, "crop_pct": 1.0, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                           "num_frames": 4, "sampling": "dense", "text_template": "a video of {}"}
    model.save_pretrained(tmp_path / "hf")
    assert xclip.load_pretrained(tmp_path / "hf").preprocessing == model.preprocessing
    save_checkpoint(model, tmp_path / "m.pth")
    assert xclip.load_pretrained(tmp_path / "m.pth").preprocessing == model.preprocessing
    transformers = pytest.importorskip("transformers")
    transformers.XCLIPModel.from_pretrained(str(tmp_path / "hf"))
    proc = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"))
    assert proc.crop_size["height"] == 32 and proc.size["shortest_edge"] == 32 and list(proc.image_mean) == [0.5] * 3


def test_eval_warns_about_architecture_and_clip_init(files, tmp_path):
    """The config says one architecture, the checkpoint is another: eval names both."""
    r = xclip("eval", files["cfg"], "--checkpoint", files["ckpt"], "--output", tmp_path / "ev", "--no-progress",
              "--views", "1x1")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(line for line in r.stderr.splitlines() if "architecture" in line)
    assert "vision 32x1 patch 16 at 32px" in line and "patch 8 at 16px" in line


# ------------------------------------------------------------------ nn modules and tokenize
def test_nn_modules_name_dtype_and_device_mismatches():
    from xclip_kernels.nn import CrossFrameAttention

    m = CrossFrameAttention(32, 2)
    with pytest.raises(ValueError, match=r"CrossFrameAttention: 'x' is torch.float64 but the module's weights are "):
        m(torch.randn(2, 3, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"'x' is on meta but the module's weights are on cpu"):
        m(torch.randn(2, 3, 32, device="meta"))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast mixes dtypes on purpose
        assert m(torch.randn(2, 3, 32, dtype=torch.bfloat16)).shape == (2, 3, 32)


def test_truncated_prompts_are_found():
    from xclip.model.tokenizer import truncated_prompts

    assert truncated_prompts(["a short one", " ".join(["word"] * 80)]) == [" ".join(["word"] * 80)]


def test_bench_bad_device_is_one_line():
    assert_user_error(xclip("bench", "--device", "bogus", "--tiny"), "--device", "bogus")


def test_eval_takes_the_checkpoints_preprocessing_and_warns_on_clip_init(caplog):
    import logging
    from types import SimpleNamespace

    import xclip
    from xclip.apps.eval import checkpoint_preprocessing, warn_model_differences
    from xclip.config import DataConfig, RunConfig
    from xclip.model.checkpoints import _new_module_key

    model = SimpleNamespace(preprocessing={"crop_pct": 1.0, "text_template": "a video of {}", "input_size": 32})
    data = DataConfig()
    with caplog.at_level(logging.WARNING, logger="xclip.eval"):
        used = checkpoint_preprocessing(data, model, "ck.pth")
    assert used.crop_pct == 1.0 and used.text_template == "a video of {}" and data.crop_pct == 0.875
    assert "crop_pct 1.0" in caplog.text and "0.875" in caplog.text
    assert checkpoint_preprocessing(data, SimpleNamespace(preprocessing=None), "x") is data

    m = xclip.create_model(dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
                                vision_patch_size=16, transformer_width=64, transformer_layers=1, num_frames=4),
                           num_frames=None)
    clip = xclip.load_pretrained({k: v for k, v in m.state_dict().items() if not _new_module_key(k)})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xclip.eval"):
        warn_model_differences(RunConfig(), clip, "clip.pt")
    assert "clip.pt is an OpenAI CLIP checkpoint" in caplog.text and "randomly initialised" in caplog.text
    assert "the config's model section says ViT-B/32" in caplog.text  # RunConfig's default arch
