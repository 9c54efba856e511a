"""A run killed with SIGKILL mid-epoch (at a chosen step, or while writing a checkpoint) and resumed with
resume=auto ends with the same parameters as an uninterrupted run. The trainer kills itself where the test
says (XCLIP_TEST_KILL_AT_STEP, XCLIP_TEST_KILL_IN_SAVE): no timers."""

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


# --------------------------------------------------------------------------- interrupted writes, full disks
_WRITER = r"""
import os, sys, torch
from xclip.engine import checkpoint as ck
out = sys.argv[1]
big = {"model": {"w": torch.randn(4_000_000)}, "epoch": 0, "step": 0}  # not resumable: skipped
step = 0
print("ready", flush=True)
while True:
    step += 1
    ck.atomic_save(dict(big, step=step), os.path.join(out, ck.checkpoint_name(step)))
"""


def _temporaries(folder: str) -> list[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".tmp"))


def test_kill_during_checkpoint_writes_leaves_no_temporaries_after_restart(tmp_path):
    """SIGKILL a process while it writes 16 MB checkpoints, 10 times; each kill may strand a temporary.
    The next run of `xclip train` in that folder removes every one of them (and nothing else), and the
    checkpoints that were completed still load."""
    import random
    import sys

    import torch

    from xclip.engine import checkpoint as ck

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.tmp").write_text("not ours")  # a file of another naming stays
    rng = random.Random(0)
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(out)], cwd=REPO, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    stale = [f for f in _temporaries(out) if f != "notes.tmp"]
    print(f"{len(stale)} temporaries left by 10 kills: {stale}")
    assert stale, "no kill landed during a write: the test shows nothing (make the writes longer)"
    assert all(f.startswith(".step_s") for f in stale)
    for _, _, p in ck.list_checkpoints(str(out)):  # completed files are whole
        torch.load(p, weights_only=True)

    cfg = tiny_config(data, str(out), epochs=1, batch_size=4)
    run(xclip_train_cmd(write_config(cfg, str(tmp_path / "c.yaml")), "train.resume=auto"))
    assert _temporaries(out) == ["notes.tmp"], _temporaries(out)
    log = open(os.path.join(out, "log.txt")).read()
    assert log.count("removed stale checkpoint temporary") == len(stale)


def test_remove_stale_temporaries_touches_only_our_names(tmp_path):
    from xclip.engine import checkpoint as ck

    ours = [".step_s000000004.pth.ab12_cd.tmp", ".epoch_0001_s000000008.pth.x9.tmp", ".best.pth.q.tmp"]
    others = ["step_s000000004.pth", ".other.pth.x.tmp", "best.pth.tmp", ".step_s1.pth.tmp.keep", "a.tmp"]
    for n in ours + others:
        (tmp_path / n).write_bytes(b"x")
    removed = ck.remove_stale_temporaries(str(tmp_path), log=lambda m: None)
    assert sorted(os.path.basename(p) for p in removed) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(others)
    assert ck.remove_stale_temporaries(str(tmp_path / "missing"), log=print) == []


def _small_tmpfs(path, size: str):
    """Mount a tmpfs of ``size`` at ``path``; the reason it cannot be done here otherwise."""
    import shutil

    if os.name != "posix" or not shutil.which("mount"):
        return "no mount command on this platform"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        return f"mount -t tmpfs failed here: {r.stderr.strip() or r.returncode}"
    return None


def test_disk_full_is_a_clear_error_and_keeps_the_previous_checkpoint(tmp_path):
    """On a 3 MiB tmpfs a 1 MB checkpoint fits and a 4 MB one does not: the error names the folder (ENOSPC),
    no temporary is left, and the previous checkpoint is byte-for-byte intact."""
    import errno

    import pytest
    import torch

    from xclip.apps.cli import describe_error
    from xclip.engine import checkpoint as ck

    mnt = tmp_path / "small"
    why = _small_tmpfs(mnt, "3m")
    if why:
        pytest.skip(why)
    try:
        first = os.path.join(mnt, ck.checkpoint_name(1))
        ck.atomic_save({"w": torch.zeros(250_000), "step": 1}, first)
        before = open(first, "rb").read()
        with pytest.raises(OSError) as ei:
            ck.atomic_save({"w": torch.zeros(1_000_000), "step": 2}, os.path.join(mnt, ck.checkpoint_name(2)))
        assert ei.value.errno == errno.ENOSPC
        msg = describe_error(ei.value)
        assert str(mnt) in msg and "no space left" in msg.lower() and "\n" not in msg
        assert sorted(os.listdir(mnt)) == [os.path.basename(first)]  # no temporary, no torn step-2 file
        assert open(first, "rb").read() == before
        assert torch.load(first, weights_only=True)["step"] == 1
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


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
