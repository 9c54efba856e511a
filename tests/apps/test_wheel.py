"""The installed package stands alone: a wheel built from this checkout, installed into a fresh virtual
environment, runs ``xclip bench --tiny``, ``xclip demo --help`` and ``xclip predict --help`` from a folder outside
the repository (scripts/check_wheel.sh; about a minute: the wheel is built without the CUDA extension)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_wheel_runs_the_cli_outside_the_repository(tmp_path):
    for tool in ("bash", "git", "tar"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the script copies the tracked files)")
    env = dict(os.environ, PYTHON=sys.executable, WORK=str(tmp_path), XCLIP_KERNELS_SKIP_CUDA_BUILD="1",
               BENCH_ARGS="--batch 2 --frames 4 --classes 5 --warmup 0 --iters 1 --train-iters 1 --strict")
    env.pop("PYTHONPATH", None)  # the fresh environment must not see this checkout
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_wheel.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "== wheel check passed" in out
    assert f"xclip from {tmp_path / 'venv'}" in out  # imported from the fresh environment, not the checkout
    assert "usage: xclip demo" in out and "usage: xclip predict" in out
    records = json.loads((tmp_path / "run" / "bench_out" / "results.json").read_text())
    ok = {r["contender"] for r in records if r["status"] == "ok"}
    assert {"ours[torch]", "plain"} <= ok
