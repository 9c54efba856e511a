"""`xclip demo` repeats itself: the same numbers whatever the load and however many trainings run at once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch


def _train_losses(run_dir: str) -> list[float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, filter(str.strip, f)) if r["kind"] == "train"]


def _burner():
    """Two busy processes (the machine's cores are taken by someone else while the demo runs)."""
    code = "import time\nt = time.time()\nwhile time.time() - t < 300: pass\n"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]


def test_quick_demo_repeats_under_load_and_across_jobs(tmp_path):
    """Run 1: both trainings at once (two processes). Run 2: the X-CLIP training alone, in this process,
    while two busy-looping processes compete for the cores. Every logged loss and every result is identical."""
    from xclip.apps.demo.demo import run_demo

    out1, out2 = str(tmp_path / "a"), str(tmp_path / "b")
    r1 = run_demo(out1, quick=True, jobs=2, progress=False)
    assert r1["jobs"] == 2 or (os.cpu_count() or 1) < 2
    shutil.copytree(os.path.join(out1, "data"), os.path.join(out2, "data"))  # reused as is (same spec)
    burners = _burner()
    try:
        r2 = run_demo(out2, quick=True, jobs=1, ablation=False, progress=False)
    finally:
        for p in burners:
            p.kill()
            p.wait()
    a, b = r1["runs"]["run_crossframe"], r2["runs"]["run_crossframe"]
    la, lb = _train_losses(a["run_dir"]), _train_losses(b["run_dir"])
    assert len(la) == a["steps"] > 0
    assert la == lb  # bitwise, every step
    for key in ("final_loss", "test_top1", "test_top5", "zeroshot_top1", "zeroshot_all_classes_top1",
                "test_attributes", "zeroshot_attributes", "zeroshot_all_classes_attributes", "val"):
        assert a[key] == b[key], key
    for name in ("run_crossframe", "run_meanpool"):
        assert os.path.getsize(os.path.join(out1, f"zeroshot_all_names_{name}.png")) > 1000
    assert r1["cpu_time_s"] > 0 and "CPU time" in open(os.path.join(out1, "report.md")).read()


def test_restrict_classes_is_the_softmax_over_the_subset():
    from xclip.apps.demo.demo import restrict_classes

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 10, generator=g, dtype=torch.float64) * 4
    cols = [6, 7, 8, 9]
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2])
    r = restrict_classes({"probs": logits.softmax(1).float(), "labels": labels, "top1": -1.0}, cols)
    want = logits[:, cols].softmax(1)
    torch.testing.assert_close(r["probs"].double(), want, rtol=1e-6, atol=1e-7)
    assert r["top1"] == pytest.approx(100.0 * float((want.argmax(1) == labels).double().mean()))
    assert r["num_classes"] == 4


def test_jobs_must_be_positive(capsys):
    from xclip.apps.demo.demo import main

    assert main(["--jobs", "0"]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err
