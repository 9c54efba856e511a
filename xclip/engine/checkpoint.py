"""Training checkpoints: atomic writes, discovery of the newest valid one, RNG state.

A checkpoint is ``{"model": state_dict, "config": model config dict,
"train_config": full config, "optimizer", "scheduler", "scaler", "epoch",
"step", "batch_in_epoch", "epoch_complete", "best_metric", "rng", ...}``;
its ``model``/``config`` pair is what ``xclip.load_pretrained`` reads. Files
are written to a temporary name in the same folder, flushed and fsynced,
then renamed over the target, so a kill at any moment leaves either the old
file or the new one, never a torn one. Loading uses ``weights_only=True``.

Names: ``epoch_{E:04d}_s{STEP:09d}.pth`` after each epoch,
``step_s{STEP:09d}.pth`` mid-epoch (``train.save_every_steps``), and
``best.pth``. ``resume=auto`` takes the newest (highest step; an epoch-end
file wins a tie) that loads and has the required keys.
"""

from __future__ import annotations

import errno
import glob
import os
import random
import re
import signal
import tempfile
import warnings
from typing import Any

import numpy as np
import torch

__all__ = ["atomic_save", "load_checkpoint", "checkpoint_name", "list_checkpoints", "find_latest_valid",
           "get_rng_state", "set_rng_state", "REQUIRED_KEYS", "prune_step_checkpoints", "remove_stale_temporaries"]

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step")
_NAME_RE = re.compile(r"^(?:(epoch)_(\d+)|step)_s(\d+)\.pth$")
# atomic_save's temporaries: "." + target name + "." + mkstemp's random part + ".tmp"
_TMP_RE = re.compile(r"^\.((?:epoch_\d+_s\d+|step_s\d+|best)\.pth)\.[A-Za-z0-9_]+\.tmp$")


def atomic_save(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        if os.environ.get("XCLIP_TEST_KILL_IN_SAVE") == os.path.basename(path):  # tests: die mid-write
            os.kill(os.getpid(), signal.SIGKILL)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _is_disk_full(e):
            raise OSError(errno.ENOSPC, f"no space left on device in {directory} while writing checkpoint "
                          f"{os.path.basename(path)}; the previous checkpoints there are intact (free space, "
                          "then resume with train.resume=auto)") from e
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised directly or wrapped by torch.save (a RuntimeError from its zip writer)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, RuntimeError) and ("No space left" in str(e) or "file write failed" in str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def remove_stale_temporaries(directory: str, log=print) -> list[str]:
    """Delete the temporaries a killed :func:`atomic_save` left in ``directory`` (only names it makes).

    Call it when a run starts or resumes, before this run writes anything:
    a temporary is never renamed once its writer is gone. Returns the paths
    removed.
    """
    removed = []
    if not os.path.isdir(directory):
        return removed
    for name in sorted(os.listdir(directory)):
        if not _TMP_RE.match(name):
            continue
        path = os.path.join(directory, name)
        try:
            size = os.path.getsize(path)
            os.unlink(path)
        except OSError as e:
            warnings.warn(f"could not delete stale checkpoint temporary {path}: {e}")
            continue
        removed.append(path)
        log(f"removed stale checkpoint temporary {name} ({size / 2**20:.1f} MiB) left by an interrupted write")
    return removed


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn / foreign / corrupt file
        raise ValueError(f"checkpoint {path} could not be read: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def checkpoint_name(step: int, epoch: int | None = None) -> str:
    """epoch_{E}_s{STEP}.pth after a completed epoch E, else step_s{STEP}.pth."""
    return f"epoch_{epoch:04d}_s{step:09d}.pth" if epoch is not None else f"step_s{step:09d}.pth"


def list_checkpoints(directory: str) -> list[tuple[int, bool, str]]:
    """[(step, is_epoch_end, path)] sorted oldest -> newest."""
    out = []
    for path in glob.glob(os.path.join(directory, "*.pth")):
        m = _NAME_RE.match(os.path.basename(path))
        if m:
            out.append((int(m.group(3)), m.group(1) is not None, path))
    return sorted(out)


def find_latest_valid(directory: str, log=print) -> tuple[str, dict] | None:
    """The newest checkpoint in ``directory`` that loads and has the required keys."""
    for step, _, path in reversed(list_checkpoints(directory)):
        try:
            ckpt = load_checkpoint(path)
        except ValueError as e:
            log(f"skipping unreadable checkpoint: {e}")
            continue
        missing = [k for k in REQUIRED_KEYS if k not in ckpt]
        if missing:
            log(f"skipping checkpoint {path}: missing keys {missing}")
            continue
        return path, ckpt
    return None


def prune_step_checkpoints(directory: str, keep: int) -> None:
    """Delete all but the ``keep`` newest mid-epoch checkpoints (epoch-end and best files stay)."""
    steps = [c for c in list_checkpoints(directory) if not c[1]]
    for _, _, path in steps[: max(0, len(steps) - max(keep, 0))]:
        try:
            os.unlink(path)
        except OSError as e:
            warnings.warn(f"could not delete old checkpoint {path}: {e}")


def prune_epoch_checkpoints(directory: str, keep: int) -> None:
    """Delete all but the ``keep`` newest epoch-end checkpoints (best.pth and mid-epoch files stay)."""
    ends = [c for c in list_checkpoints(directory) if c[1]]
    for _, _, path in ends[: max(0, len(ends) - max(keep, 1))]:
        try:
            os.unlink(path)
        except OSError as e:
            warnings.warn(f"could not delete old checkpoint {path}: {e}")


def get_rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _py_state_to_plain(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_py_state_from_plain(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = [s.cpu() for s in state["cuda"]]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _py_state_to_plain(st):
    version, internal, gauss = st
    return [int(version), list(internal), gauss]


def _py_state_from_plain(st):
    version, internal, gauss = st
    return (int(version), tuple(int(x) for x in internal), gauss)
