"""A run killed with SIGKILL mid-epoch and resumed with resume=auto ends with the same
parameters as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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
    # slow the steps down so the kill lands mid-epoch 1, after the checkpoint of step 2
    proc = subprocess.Popen(xclip_train_cmd(path, "train.debug_step_delay=1.5"), cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    target = os.path.join(out, "step_s000000002.pth")
    deadline = time.time() + 120
    while not os.path.exists(target) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert os.path.exists(target), "the run never wrote its step-2 checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = [f for f in os.listdir(out) if f.startswith("epoch_0001")]
    assert not done, f"the run finished before it was killed: {os.listdir(out)}"

    p = run(xclip_train_cmd(path, "train.resume=auto"))
    log = open(os.path.join(out, "log.txt")).read()
    assert "resumed from" in log
    a, b = final_state(ref["output"]), final_state(out)
    assert a["step"] == b["step"] == 8 and b["epoch"] == 1
    diff = max_param_diff(a["model"], b["model"])
    assert diff <= 1e-6, f"resumed run differs from the uninterrupted one by {diff}"
    for k in a["optimizer"]["state"]:
        assert max_param_diff(a["optimizer"]["state"][k], b["optimizer"]["state"][k]) <= 1e-6
    assert a["scheduler"] == b["scheduler"]
