"""Shared helpers for the training tests: a tiny data set and config, subprocess runs."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_ARCH = {
    "embed_dim": 32, "image_resolution": 16, "vision_layers": 1, "vision_width": 32, "vision_patch_size": 8,
    "vision_heads": 2, "transformer_width": 32, "transformer_heads": 2, "transformer_layers": 1,
    "context_length": 16, "mit_layers": 1, "mit_heads": 2, "prompt_layers": 1, "prompt_heads": 2,
}


def make_tiny_data(root: str, train_per_class: int = 1, held_out: int = 0) -> dict:
    """8 classes (2 colours x 2 shapes x 2 motions) of 16x16, 8-frame mp4 clips."""
    from xclip.apps.demo.demo_data import ShapesSpec, generate_dataset

    spec = ShapesSpec(colours=["red", "blue"], shapes=["circle", "square"], motions=["left", "up"],
                      num_held_out=held_out, size=16, frames=8, train_per_class=train_per_class,
                      val_per_class=1, test_per_class=0, zeroshot_per_class=1 if held_out else 0, seed=3)
    return generate_dataset(root, spec)


def tiny_config(data: str, output: str, **train) -> dict:
    cfg = {
        "seed": 7,
        "output": output,
        "model": {"arch": dict(TINY_ARCH), "num_frames": 4, "fix_text": True},
        "data": {"root": data, "train_list": os.path.join(data, "train.txt"), "val_list": os.path.join(data, "val.txt"),
                 "labels": os.path.join(data, "labels_train.csv"), "input_size": 16, "num_workers": 0,
                 "decoder": "pyav", "augment": {"flip": 0.0, "jitter": 0.0, "grayscale": 0.0}},
        "train": {"epochs": 2, "warmup_epochs": 0.5, "lr": 1e-3, "batch_size": 4, "accumulation_steps": 1,
                  "amp": "none", "mixup": 0.0, "cutmix": 0.0, "device": "cpu", "eval_every": 0, "final_test": False,
                  "deterministic": True, "num_threads": 1, **train},
        "log": {"progress": False, "tensorboard": False, "print_every": 1},
    }
    return cfg


def write_config(cfg: dict, path: str) -> str:
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def xclip_train_cmd(config_path: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "xclip", "train", config_path, *overrides]


def run(cmd: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def final_state(output: str) -> dict:
    from xclip.engine.checkpoint import list_checkpoints, load_checkpoint

    ckpts = list_checkpoints(output)
    assert ckpts, f"no checkpoint in {output}: {os.listdir(output)}"
    return load_checkpoint(ckpts[-1][2])


def max_param_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())
