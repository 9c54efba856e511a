"""`xclip demo --quick`: the whole pipeline (mp4 data, two trainings, zero-shot, report) at toy size."""

from __future__ import annotations

import json
import os

import yaml

from train_utils import REPO


def test_demo_config_file_matches_embedded_default():
    from xclip.demo import DEMO_CONFIG

    with open(os.path.join(REPO, "configs", "demo.yaml")) as f:
        file_cfg = yaml.safe_load(f)
    for section in ("model", "train", "test"):
        assert file_cfg[section] == DEMO_CONFIG[section], section
    for key in ("input_size", "num_workers", "decoder", "augment"):
        assert file_cfg["data"][key] == DEMO_CONFIG["data"][key], key


def test_quick_demo_end_to_end(tmp_path):
    from xclip.demo import main

    out = str(tmp_path / "demo")
    assert main(["--output", out, "--quick", "--no-progress"]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    assert set(res["runs"]) == {"run_crossframe", "run_meanpool"}
    for name, r in res["runs"].items():
        assert 0.0 <= r["test_top1"] <= 100.0 and r["test_videos"] > 0
        assert 0.0 <= r["zeroshot_top1"] <= 100.0 and r["zeroshot_videos"] == 6 * 3
        for png in (f"confusion_test_{name}.png", f"confusion_zeroshot_{name}.png"):
            assert os.path.getsize(os.path.join(out, png)) > 1000
    assert res["runs"]["run_crossframe"]["cross_frame"] and not res["runs"]["run_meanpool"]["cross_frame"]
    report = open(os.path.join(out, "report.md")).read()
    assert "curves.png" in report and "zero-shot" in report
    assert os.path.getsize(os.path.join(out, "curves.png")) > 1000
    # real mp4 files and official-format lists, held-out classes absent from training
    data = os.path.join(out, "data")
    first = open(os.path.join(data, "train.txt")).readline().split()
    assert first[0].endswith(".mp4") and os.path.isfile(os.path.join(data, first[0])) and first[1].isdigit()
    info = json.load(open(os.path.join(data, "dataset.json")))
    assert not set(info["held_out_classes"]) & set(info["trained_classes"])
    # the held-out names reuse words seen in training
    words = {w for n in info["trained_classes"] for w in n.split()}
    assert all(set(n.split()) <= words for n in info["held_out_classes"])
    # the cross-frame run's checkpoints load as models
    import xclip

    m = xclip.load_pretrained(os.path.join(out, "run_crossframe", "best.pth"))
    assert m.config.cross_frame
