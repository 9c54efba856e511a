"""A run killed with SIGKILL mid-epoch (at a chosen step, or while writing a checkpoint) and resumed with
resume=auto ends with the same parameters as an uninterrupted run. The trainer kills itself where the test
says (XCLIP_TEST_KILL_AT_STEP, XCLIP_TEST_KILL_IN_SAVE): no timers."""

from __future__ import annotations

import os
import signal
import subprocess

from train_utils import REPO, final_state, make_tiny_data, max_param_diff, run, subprocess_env, tiny_config, \
    write_config, xclip_train_cmd


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)  # 8 clips, batch 2: 4 steps per epoch, 8 in all
    # mixup/cutmix and drop path on: their random streams must be restored too
    over = dict(epochs=2, batch_size=2, save_every_steps=1, mixup=0.8, cutmix=1.0, warmup_epochs=0.5)
    ref = tiny_config(data, str(tmp_path / "ref"), **over)
    ref["model"]["overrides"] = {"drop_path": 0.1}
    run(xclip_train_cmd(write_config(ref, str(tmp_path / "ref.yaml"))))

    out = str(tmp_path / "killed")
    cfg = dict(ref, output=out)
    path = write_config(cfg, str(tmp_path / "killed.yaml"))
    # the trainer SIGKILLs itself right after step 3 (mid first epoch, after that step's checkpoint): the
    # resumed run then crosses an epoch boundary
    killed = _run_killed(xclip_train_cmd(path), XCLIP_TEST_KILL_AT_STEP="3")
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed ({killed.returncode}):\n{killed.stderr[-2000:]}"
    names = sorted(f for f in os.listdir(out) if f.endswith(".pth"))
    assert "step_s000000003.pth" in names and not any(f.startswith("epoch_") for f in names), names

    p = run(xclip_train_cmd(path, "train.resume=auto"))
    log = open(os.path.join(out, "log.txt")).read()
    assert "resumed from" in log and "step_s000000003.pth: epoch 0, step 3" in log
    a, b = final_state(ref["output"]), final_state(out)
    assert a["step"] == b["step"] == 8 and b["epoch"] == 1
    diff = max_param_diff(a["model"], b["model"])
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"
    for k in a["optimizer"]["state"]:
        assert max_param_diff(a["optimizer"]["state"][k], b["optimizer"]["state"][k]) <= 1e-6
    assert a["scheduler"] == b["scheduler"]


def _run_killed(cmd: list[str], **env: str) -> subprocess.CompletedProcess:
    """Run ``cmd`` with test-only kill switches in the environment (the trainer honours them)."""
    return subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **env}, capture_output=True, text=True, timeout=240)


def test_kill_during_checkpoint_write_then_resume_matches(tmp_path):
    """Killed while writing a checkpoint (file written, not yet renamed into place): the torn temporary file is
    ignored, resume=auto starts from the previous checkpoint and ends where an uninterrupted run ends."""
    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)  # 8 clips, batch 4: 2 steps per epoch, 4 in all
    ref = tiny_config(data, str(tmp_path / "ref"), epochs=2, batch_size=4, warmup_epochs=0.5, save_every_steps=1)
    run(xclip_train_cmd(write_config(ref, str(tmp_path / "ref.yaml"))))
    out = str(tmp_path / "killed")
    path = write_config(dict(ref, output=out), str(tmp_path / "killed.yaml"))
    killed = _run_killed(xclip_train_cmd(path), XCLIP_TEST_KILL_IN_SAVE="step_s000000003.pth")
    assert killed.returncode == -signal.SIGKILL, f"the run was not killed ({killed.returncode}):\n{killed.stderr[-2000:]}"
    left = sorted(os.listdir(out))
    assert "step_s000000003.pth" not in left and any(f.startswith(".step_s000000003.pth.") for f in left), left
    run(xclip_train_cmd(path, "train.resume=auto"))
    log = open(os.path.join(out, "log.txt")).read()
    assert "resumed from" in log and "epoch_0000_s000000002.pth" in log.split("resumed from", 1)[1].splitlines()[0]
    a, b = final_state(ref["output"]), final_state(out)
    assert a["step"] == b["step"] == 4
    assert max_param_diff(a["model"], b["model"]) <= 1e-6
    assert a["scheduler"] == b["scheduler"]
