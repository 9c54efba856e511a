"""In-process training-loop behaviour: corrupt videos, non-finite loss, checkpoints, logs."""

from __future__ import annotations

import json
import os

import pytest
import torch

from train_utils import make_tiny_data, tiny_config


def test_corrupt_video_is_skipped_and_training_completes(tmp_path):
    from xclip.engine.trainer import train

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)
    bad_rel = open(os.path.join(data, "train.txt")).readline().split()[0]
    with open(os.path.join(data, bad_rel), "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
    cfg = tiny_config(data, str(tmp_path / "out"), epochs=2, batch_size=4, eval_every=1, final_test=True)
    with pytest.warns(Warning):
        summary = train(cfg)
    assert summary["skipped_videos"] == 2  # once per epoch
    assert all(p.endswith(bad_rel) for p in summary["skipped_paths"])
    assert summary["steps"] == 4
    log = open(os.path.join(cfg["output"], "log.txt")).read()
    assert "skipped 1 unreadable video(s)" in log and bad_rel in log
    assert "val top1" in log and "test (" in log
    names = sorted(os.listdir(cfg["output"]))
    assert "epoch_0000_s000000002.pth" in names and "epoch_0001_s000000004.pth" in names and "best.pth" in names
    recs = [json.loads(line) for line in open(os.path.join(cfg["output"], "metrics.jsonl"))]
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs if r["kind"] == "train")
    s = json.load(open(os.path.join(cfg["output"], "summary.json")))
    assert s["skipped_videos"] == 2 and 0.0 <= s["test"]["top1"] <= 100.0
    # a training checkpoint is also a model checkpoint that load_pretrained reads
    import xclip

    ck = torch.load(os.path.join(cfg["output"], "best.pth"), weights_only=True)
    m = xclip.load_pretrained(os.path.join(cfg["output"], "best.pth"))
    assert all(torch.equal(v, ck["model"][k]) for k, v in m.state_dict().items())


def test_non_finite_loss_is_reported_with_its_step(tmp_path):
    import xclip
    from xclip.engine.trainer import NonFiniteLossError, train

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)
    cfg = tiny_config(data, str(tmp_path / "out"), epochs=1, batch_size=4)
    model = xclip.create_model(cfg["model"]["arch"], num_frames=4)
    with torch.no_grad():
        model.visual.conv1.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 1 \(epoch 0\)"):
        train(cfg, model=model)
    assert "non-finite training loss" in open(os.path.join(cfg["output"], "log.txt")).read()


def test_bad_settings_raise_value_error(tmp_path):
    from xclip.engine.trainer import train

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)
    cfg = tiny_config(data, str(tmp_path / "out"), batch_size=4, accumulation_steps=4)  # 2 batches < 4
    with pytest.raises(ValueError, match="accumulation_steps=4"):
        train(cfg)
    cfg = tiny_config(data, str(tmp_path / "out2"))
    cfg["data"]["num_classes"] = 5
    with pytest.raises(ValueError, match="num_classes=5"):
        train(cfg)


def test_text_freeze_epochs_holds_the_text_tower_then_trains_it(tmp_path):
    """train.text_freeze_epochs: the text tower does not move during the hold, the video side does; afterwards
    both train. Checked on the checkpoints written at the end of each epoch."""
    from xclip.engine.checkpoint import list_checkpoints, load_checkpoint
    from xclip.engine.optim import is_text
    from xclip.engine.trainer import train

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)  # 8 clips: 2 steps per epoch at batch 4
    cfg = tiny_config(data, str(tmp_path / "out"), epochs=3, warmup_epochs=0, text_freeze_epochs=1)
    cfg["model"]["fix_text"] = False
    import xclip

    model = xclip.create_model(cfg["model"]["arch"], num_frames=4)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    summary = train(cfg, model=model)
    assert summary["steps"] == 6
    states = [load_checkpoint(p)["model"] for _, _, p in list_checkpoints(cfg["output"])]
    assert len(states) == 3

    def moved(state, keys):
        return {k for k in keys if not torch.equal(state[k], init[k])}

    text = [k for k in init if is_text(k)]
    video = [k for k in init if k.startswith("visual.")]
    assert text and video
    assert moved(states[0], text) == set()           # held for the first epoch (2 steps)
    assert moved(states[0], video) == set(video)     # while the video side trained
    assert moved(states[2], text) == set(text)       # then the text tower trains too
    log = open(os.path.join(cfg["output"], "log.txt")).read()
    assert "text tower held still (lr 0) for the first 2 steps" in log


def test_data_crop_pct_reaches_the_training_and_test_transforms(tmp_path):
    from xclip.engine.trainer import _dataset

    data = str(tmp_path / "data")
    make_tiny_data(data, train_per_class=1)  # 16 px clips, input_size 16
    clip = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    for crop_pct, same in ((1.0, True), (0.875, False)):
        cfg = tiny_config(data, str(tmp_path / "out"))
        cfg["data"]["crop_pct"] = crop_pct
        cfg["data"]["augment"]["scales"] = [1.0]
        cfg["data"]["mean"], cfg["data"]["std"] = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
        tr = _dataset(cfg, cfg["data"]["train_list"], "train")
        te = _dataset(cfg, cfg["data"]["val_list"], "test")
        assert tr.crop_pct == te.crop_pct == crop_pct
        expected = clip.float() / 255
        assert torch.allclose(tr.transform(clip), expected) is same
        assert torch.allclose(te.transform(clip)[0], expected) is same
