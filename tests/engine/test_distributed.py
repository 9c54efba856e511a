"""Two processes under torchrun (gloo, CPU) train to the same parameters as one process
with the same global batch."""

from __future__ import annotations

import os
import sys

import pytest

from train_utils import final_state, make_tiny_data, max_param_diff, run, tiny_config, write_config, xclip_train_cmd

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed beside this Python")
def test_two_process_ddp_matches_single_process(tmp_path):
    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)  # 8 training clips
    # The global batch is the whole training set, so both runs see the same clips in every
    # step whatever order each sampler draws them in; the training draws (frames, crops)
    # are a function of (seed, epoch, clip). 3 epochs = 3 optimiser steps.
    # eps=1e-3 (not 1e-8): Adam divides by sqrt(v), which turns float-rounding noise in
    # parameters whose gradient is ~0 into updates of up to lr; a larger eps keeps those
    # updates proportional to the gradient, so the comparison tests the training, not rounding.
    base = tiny_config(data, "", epochs=3, warmup_epochs=0, lr=1e-3, eps=1e-3)
    single = dict(base, output=str(tmp_path / "single"))
    single["train"] = dict(base["train"], batch_size=8)
    double = dict(base, output=str(tmp_path / "ddp"))
    double["train"] = dict(base["train"], batch_size=4)
    run(xclip_train_cmd(write_config(single, str(tmp_path / "single.yaml"))))
    p = run([TORCHRUN, "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "xclip", "train",
             write_config(double, str(tmp_path / "ddp.yaml"))])
    a, b = final_state(single["output"]), final_state(double["output"])
    assert a["step"] == b["step"] == 3
    assert b["world_size"] == 2 and len(b["rng"]) == 2
    diff = max_param_diff(a["model"], b["model"])
    moved = max_param_diff(a["model"], initial_state(base))
    assert moved > 1e-4, "training did not change the parameters"
    assert diff < 1e-6, f"DDP and single-process parameters differ by {diff}"
    log = open(os.path.join(double["output"], "log.txt")).read()
    assert "effective batch = 4 per process x 1 accumulation x 2 process(es) = 8" in log
    assert "gloo" in log


def initial_state(base) -> dict:
    """The parameters the trainer starts from: it seeds with cfg["seed"], then builds the model."""
    import random

    import numpy as np
    import torch

    import xclip

    random.seed(base["seed"])
    np.random.seed(base["seed"])
    torch.manual_seed(base["seed"])
    return xclip.create_model(base["model"]["arch"], num_frames=base["model"]["num_frames"]).state_dict()
