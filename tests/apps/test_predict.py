"""`xclip predict` end to end: a tiny randomly initialised X-CLIP checkpoint, real mp4 files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from video_utils import make_corrupt_video, make_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=32, vision_patch_size=16,
            transformer_width=32, transformer_heads=2, transformer_layers=1, num_frames=4, vision_heads=2,
            mit_heads=2, prompt_heads=2)
NAMES = ["riding a bike", "eating spaghetti", "juggling", "swimming", "archery", "dancing"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import xclip
    from xclip.model.checkpoints import save_checkpoint

    d = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    model = xclip.create_model(dict(TINY), num_frames=None).eval()
    ckpt = d / "tiny.pth"
    save_checkpoint(model, ckpt)
    videos = [make_video(d / f"clip{i}.mp4", num_frames=12 + 2 * i, height=36, width=48, seed=i) for i in range(3)]
    labels = d / "labels.csv"
    labels.write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(NAMES)))
    return d, model, ckpt, videos, labels


def _expected_probs(model, video, names, crop_pct=0.875):
    import xclip
    from xclip.data import VideoDataset

    ds = VideoDataset([(video, 0)], None, num_frames=4, mode="test", input_size=32, crop_pct=crop_pct)
    with torch.no_grad():
        return model(ds[0]["video"], xclip.tokenize(names)).softmax(-1)[0]


def test_predict_main_in_process(setup, capsys):
    from xclip.apps.predict import main

    d, model, ckpt, videos, labels = setup
    out_json = d / "pred.json"
    rc = main([*videos, "--checkpoint", str(ckpt), "--labels", str(labels), "--top-k", "3", "--batch-size", "2",
               "--json", str(out_json), "--device", "cpu"])
    assert rc == 0
    preds = json.load(open(out_json))
    assert [p["video"] for p in preds] == [os.path.abspath(v) for v in videos]
    for p, v in zip(preds, videos):
        exp = _expected_probs(model, v, NAMES)
        top = exp.topk(3)
        assert [t["label"] for t in p["top_k"]] == [NAMES[i] for i in top.indices.tolist()]
        assert [t["prob"] for t in p["top_k"]] == pytest.approx(top.values.tolist(), abs=1e-5)
    text = capsys.readouterr().out
    assert videos[0] in text and "%" in text


def test_predict_cli_subprocess_reports_bad_files(setup):
    d, model, ckpt, videos, labels = setup
    bad = make_corrupt_video(d / "broken.mp4", "garbage")
    missing = str(d / "not_there.mp4")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "xclip", "predict", videos[0], bad, missing, videos[2],
                        "--checkpoint", str(ckpt), "--labels", ",".join(NAMES[:4]), "--top-k", "2"],
                       capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert r.returncode == 1, r.stderr  # some videos could not be read
    assert "broken.mp4" in r.stderr and "not_there.mp4" in r.stderr
    assert "2 of 4 video(s) could not be read" in r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == os.path.abspath(videos[0]) and lines[3] == os.path.abspath(videos[2])
    probs = [float(line.split("%")[0]) for line in lines if line.startswith("  ")]
    assert len(probs) == 4 and all(0 <= p <= 100 for p in probs)
    assert probs[0] >= probs[1] and probs[2] >= probs[3]


def test_predict_bad_arguments(setup):
    from xclip.apps.predict import main

    d, model, ckpt, videos, labels = setup
    assert main([videos[0], "--checkpoint", str(ckpt), "--labels", str(labels), "--top-k", "0"]) == 2
    assert main([videos[0], "--checkpoint", str(ckpt), "--labels", str(d / "nope.csv")]) == 2


def test_predict_crop_pct_option(setup):
    from xclip.apps.predict import main

    d, model, ckpt, videos, labels = setup
    out_json = d / "pred_crop.json"
    assert main([videos[0], "--checkpoint", str(ckpt), "--labels", str(labels), "--top-k", "6", "--crop-pct", "1.0",
                 "--json", str(out_json), "--device", "cpu", "--no-progress"]) == 0
    got = {t["label"]: t["prob"] for t in json.load(open(out_json))[0]["top_k"]}
    exp = _expected_probs(model, videos[0], NAMES, crop_pct=1.0)
    assert [got[n] for n in NAMES] == pytest.approx(exp.tolist(), abs=1e-5)
    # the view differs from the default 0.875 one (36 px short side kept whole vs resized to 37 and cropped)
    assert not torch.allclose(exp, _expected_probs(model, videos[0], NAMES), atol=1e-6)
