"""The Trainer's parts, each called alone: setup, step, save, resume, evaluate."""

from __future__ import annotations

import math
import os

import pytest
import torch

from train_utils import make_tiny_data, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("trainer_data"))
    make_tiny_data(root, train_per_class=1)  # 8 clips
    return root


def _trainer(data, out, **train):
    from xclip.engine import Trainer

    cfg = tiny_config(data, out, **train)
    return Trainer(cfg).setup()


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_setup_builds_every_part(data, tmp_path):
    t = _trainer(data, str(tmp_path / "out"), batch_size=2, epochs=3)
    assert t.steps_per_epoch == 4 and t.total_steps == 12 and t.num_classes == 8
    assert t.optimizer is not None and t.schedule is not None and t.fwd is not None
    assert t.global_step == 0 and t.start_epoch == 0
    assert os.path.isfile(os.path.join(str(tmp_path / "out"), "config.yaml"))


def test_step_alone_updates_weights_and_counts(data, tmp_path):
    t = _trainer(data, str(tmp_path / "out"), batch_size=4, warmup_epochs=0)  # lr > 0 from the first step
    batch = next(iter(t.train_loader))
    before = _params(t.model)
    rec = t.step(batch)
    assert t.global_step == 1
    assert math.isfinite(rec["loss"]) and rec["lr"] >= 0 and rec["clips"] == 4
    changed = [k for k, v in t.model.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "one optimiser step changed no weight"
    assert not any(k.startswith("transformer.") for k in changed)  # fix_text: the text tower stays frozen


def test_step_alone_stops_on_a_non_finite_loss(data, tmp_path):
    from xclip.engine import NonFiniteLossError

    t = _trainer(data, str(tmp_path / "out"), batch_size=4)
    with torch.no_grad():
        t.model.logit_scale.fill_(float("nan"))
    t._text_features = None
    with pytest.raises(NonFiniteLossError, match="non-finite training loss"):
        t.step(next(iter(t.train_loader)))
    assert t.global_step == 0


def test_save_then_resume_alone_restores_the_state(data, tmp_path):
    out = str(tmp_path / "out")
    t = _trainer(data, out, batch_size=2, epochs=2)
    it = iter(t.train_loader)
    t.step(next(it))
    t.step(next(it))
    path = t.save(epoch=0, batch_in_epoch=2, epoch_complete=False)
    assert os.path.basename(path) == "step_s000000002.pth"
    saved = _params(t.model)
    lr_saved = t.optimizer.param_groups[0]["lr"]

    fresh = _trainer(data, out, batch_size=2, epochs=2)
    assert any(not torch.equal(v, saved[k]) for k, v in fresh.model.state_dict().items() if v.is_floating_point())
    assert fresh.resume(path) is True
    assert fresh.global_step == 2 and fresh.start_epoch == 0 and fresh.skip_batches == 2
    assert all(torch.equal(v, saved[k]) for k, v in fresh.model.state_dict().items())
    assert fresh.optimizer.param_groups[0]["lr"] == lr_saved
    # resume="auto" finds the same file; with none there it starts fresh
    assert _trainer(data, out, batch_size=2, epochs=2).resume("auto") is True
    assert _trainer(data, str(tmp_path / "empty"), batch_size=2, epochs=2).resume("auto") is False


def test_evaluate_alone(data, tmp_path):
    t = _trainer(data, str(tmp_path / "out"), batch_size=4)
    res = t.evaluate(t._loader(t.cfg.data.val_list, train=False))
    assert res["num_samples"] == 8 and 0.0 <= res["top1"] <= 100.0
