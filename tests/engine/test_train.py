"""Unit tests of xclip.config and xclip.engine: config, parameter groups, schedule, mixup, checkpoints."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from xclip.engine import checkpoint as ck
from xclip.config import DEFAULTS, load_config, parse_value
from xclip.engine.mixup import MixupCutmix, smooth_one_hot, soft_target_cross_entropy
from xclip.engine.optim import build_optimizer, freeze_text, is_new_module, param_groups
from xclip.engine.schedule import CosineWarmupSchedule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------- config
def test_parse_value_types():
    assert parse_value("1e-5") == 1e-5 and isinstance(parse_value("1e-5"), float)
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[0.9, 0.98]") == [0.9, 0.98]
    assert parse_value("ViT-B/16") == "ViT-B/16"
    assert parse_value("auto") == "auto"


def test_load_config_yaml_and_overrides(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("train:\n  lr: 2.e-6\n  epochs: 50\nmodel:\n  arch: ViT-B/16\n")
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\ntrain:\n  batch_size: 4\n")
    cfg = load_config(str(child), ["train.lr=1e-5", "train.resume=auto", "model.overrides.mit_layers=2", "data.root=/x y"])
    assert cfg.train.lr == 1e-5 and cfg.train.epochs == 50 and cfg.train.batch_size == 4
    assert cfg.train.resume == "auto"
    assert cfg.model.overrides == {"mit_layers": 2}
    assert cfg.data.root == "/x y"
    assert cfg.train.weight_decay == DEFAULTS["train"]["weight_decay"]  # untouched default
    assert DEFAULTS["train"]["lr"] == 8e-6  # defaults not mutated


@pytest.mark.parametrize("override, match", [
    ("train.lr_rate=1", "unknown config key 'train.lr_rate'"),
    ("train.lr", "expected key=value"),
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.amp=fp8", "train.amp must be one of"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.lr=fast", "train.lr must be a number"),
    ("data.crop_pct=0", r"data.crop_pct must be in \(0, 1\]"),
    ("data.crop_pct=1.2", r"data.crop_pct must be in \(0, 1\]"),
    ("nosuch.x=1", "unknown config key"),
])
def test_load_config_bad_input(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))


def test_paper_configs_load_and_total_batch():
    """Every recipe loads; batch x accumulation x 8 GPUs is the official total."""
    import glob

    files = sorted(glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True))
    kinetics = [f for f in files if os.path.basename(os.path.dirname(f)) in ("k400", "k600")]
    fewshot = [f for f in files if os.path.basename(os.path.dirname(f)) == "fewshot"]
    assert len(kinetics) == 10 and len(fewshot) == 2, files
    for f in files:
        load_config(f)  # every file (demo, zero-shot, base) is a valid config
    for f in kinetics + fewshot:
        cfg = load_config(f)
        t = cfg.train
        total = t.batch_size * t.accumulation_steps * 8
        assert total == (64 if f in fewshot else 256), (f, total)
        assert t.weight_decay == 0.001 and t.betas == [0.9, 0.98] and t.label_smoothing == 0.1
        assert t.lr == (2e-6 if f in fewshot else 8e-6) and t.epochs == (50 if f in fewshot else 30)
    l14 = load_config(os.path.join(REPO, "configs", "k400", "l14_336_16f.yaml"))
    assert l14.model.arch == "ViT-L/14@336" and l14.data.input_size == 336
    assert l14.model.grad_checkpointing is True and l14.train.accumulation_steps == 32


# ----------------------------------------------------------------------------- optimiser
class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.visual = nn.Module()
        self.visual.conv1 = nn.Linear(4, 4)
        self.visual.positional_embedding = nn.Parameter(torch.zeros(5, 4))
        self.visual.message_fc = nn.Linear(4, 4)
        self.mit = nn.Module()
        self.mit.fc = nn.Linear(4, 4)
        self.prompts_generator = nn.Linear(4, 4)
        self.transformer = nn.Linear(4, 4)
        self.ln_final = nn.LayerNorm(4)
        self.logit_scale = nn.Parameter(torch.tensor(1.0))


def test_param_groups_lr_and_decay():
    m = _Toy()
    groups = {g["name"]: g for g in param_groups(m.named_parameters(), lr=1e-5, weight_decay=0.001)}
    names = {k: set(g["param_names"]) for k, g in groups.items()}
    assert names["clip_decay"] == {"visual.conv1.weight", "transformer.weight"}
    assert names["clip_no_decay"] == {"visual.conv1.bias", "visual.positional_embedding", "transformer.bias",
                                      "ln_final.weight", "ln_final.bias", "logit_scale"}
    assert names["new_decay"] == {"visual.message_fc.weight", "mit.fc.weight", "prompts_generator.weight"}
    assert names["new_no_decay"] == {"visual.message_fc.bias", "mit.fc.bias", "prompts_generator.bias"}
    assert groups["clip_decay"]["lr"] == 1e-5 and groups["new_decay"]["lr"] == pytest.approx(1e-4)
    assert groups["clip_decay"]["weight_decay"] == 0.001 and groups["clip_no_decay"]["weight_decay"] == 0.0
    assert groups["new_no_decay"]["weight_decay"] == 0.0
    # every trainable parameter exactly once
    all_names = [n for g in groups.values() for n in g["param_names"]]
    assert sorted(all_names) == sorted(n for n, _ in m.named_parameters())


def test_freeze_text_and_optimizer_settings():
    m = _Toy()
    frozen = freeze_text(m)
    assert set(frozen) == {"transformer.weight", "transformer.bias", "ln_final.weight", "ln_final.bias", "logit_scale"}
    opt = build_optimizer(m, dict(DEFAULTS["train"], lr=2e-6))
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(m.transformer.weight) not in in_opt and id(m.visual.conv1.weight) in in_opt
    assert is_new_module("visual.transformer.resblocks.0.message_attn.in_proj_weight")
    assert is_new_module("mit.resblocks.0.attn.in_proj_weight") and not is_new_module("visual.proj")


def test_param_groups_on_real_model():
    import xclip

    m = xclip.create_model({"embed_dim": 32, "image_resolution": 16, "vision_layers": 1, "vision_width": 32,
                            "vision_patch_size": 8, "transformer_width": 32, "transformer_heads": 2,
                            "transformer_layers": 1, "vision_heads": 2, "mit_heads": 2, "prompt_heads": 2}, num_frames=2)
    groups = {g["name"]: g for g in param_groups(m.named_parameters(), lr=1.0, weight_decay=0.1)}
    new = set(groups["new_decay"]["param_names"]) | set(groups["new_no_decay"]["param_names"])
    assert any("message_" in n for n in new) and any(n.startswith("mit.") for n in new)
    assert any(n.startswith("prompts_") for n in new)
    clip_names = set(groups["clip_decay"]["param_names"]) | set(groups["clip_no_decay"]["param_names"])
    assert not any(("message_" in n or n.startswith("mit.") or n.startswith("prompts_")) for n in clip_names)
    assert "positional_embedding" in groups["clip_no_decay"]["param_names"]


# ----------------------------------------------------------------------------- schedule
def test_cosine_schedule_values():
    p = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([{"params": [p], "lr": 1.0}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 10.0}])
    s = CosineWarmupSchedule(opt, total_steps=110, warmup_steps=10, min_lr_ratio=0.01)
    lrs = []
    for _ in range(120):
        lrs.append(s.get_last_lr())
        s.step()
    assert lrs[0] == [0.0, 0.0]
    assert lrs[5][0] == pytest.approx(0.5) and lrs[5][1] == pytest.approx(5.0)
    assert lrs[10][0] == pytest.approx(1.0)
    mid = 10 + 50
    assert lrs[mid][0] == pytest.approx(0.01 + 0.99 * 0.5)
    assert lrs[110][0] == pytest.approx(0.01) and lrs[119][1] == pytest.approx(0.1)  # floor lr/100
    assert all(a[0] >= b[0] - 1e-12 for a, b in zip(lrs[10:110], lrs[11:111]))  # monotone after warm-up
    st = s.state_dict()
    s2 = CosineWarmupSchedule(opt, total_steps=110, warmup_steps=10)
    s2.load_state_dict(st)
    assert s2.step_count == 120 and s2.get_last_lr()[0] == pytest.approx(0.01)


def test_schedule_hold_keeps_a_group_at_zero_then_ramps():
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(1))], "lr": 1.0, "name": "clip_decay"},
                             {"params": [nn.Parameter(torch.zeros(1))], "lr": 2.0, "name": "text_decay"}])
    s = CosineWarmupSchedule(opt, total_steps=100, warmup_steps=4, min_lr_ratio=0.01, hold={"text_decay": 10})
    free = CosineWarmupSchedule(torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0), total_steps=100, warmup_steps=4)
    lrs, ref = [], []
    for _ in range(100):
        lrs.append(s.get_last_lr())
        ref.append(free.get_last_lr()[0])
        s.step()
        free.step()
    assert [a for a, _ in lrs] == pytest.approx(ref)  # the group that is not held follows the plain schedule
    assert all(b == 0.0 for _, b in lrs[:10])
    # from step 10 a linear ramp over the warm-up length (4 steps) up to the group's own schedule
    for k, step in enumerate(range(10, 14)):
        assert lrs[step][1] == pytest.approx(2.0 * ref[step] * (k + 1) / 4)
    assert [b for _, b in lrs[14:]] == pytest.approx([2.0 * r for r in ref[14:]])
    assert s.state_dict()["hold"] == {"text_decay": 10}
    s2 = CosineWarmupSchedule(opt, total_steps=100, warmup_steps=4, hold={"text_decay": 10})
    s2.load_state_dict({"step_count": 5})
    assert s2.get_last_lr()[1] == 0.0  # a run resumed inside the hold stays held
    with pytest.raises(ValueError, match=r"hold names parameter group\(s\) \['text'\]"):
        CosineWarmupSchedule(opt, total_steps=10, hold={"text": 3})
    with pytest.raises(ValueError, match="hold steps must be >= 0"):
        CosineWarmupSchedule(opt, total_steps=10, hold={"text_decay": -1})


def test_param_groups_split_text_keeps_the_rate():
    m = _Toy()
    plain = {g["name"]: g for g in param_groups(m.named_parameters(), lr=1e-3, weight_decay=0.1)}
    split = {g["name"]: g for g in param_groups(m.named_parameters(), lr=1e-3, weight_decay=0.1, split_text=True)}
    assert set(split["text_decay"]["param_names"]) == {"transformer.weight"}
    assert set(split["text_no_decay"]["param_names"]) == {"transformer.bias", "ln_final.weight", "ln_final.bias"}
    assert split["text_decay"]["lr"] == plain["clip_decay"]["lr"] == 1e-3
    assert split["text_decay"]["weight_decay"] == 0.1 and split["text_no_decay"]["weight_decay"] == 0.0
    assert sorted(n for g in split.values() for n in g["param_names"]) == sorted(n for n, _ in m.named_parameters())


@pytest.mark.parametrize("overrides, match", [
    (["train.text_freeze_epochs=2"], "needs model.fix_text=false"),
    (["model.fix_text=false", "train.epochs=3", "train.text_freeze_epochs=3"], "must be < train.epochs=3"),
    (["model.fix_text=false", "train.text_freeze_epochs=-1"], "train.text_freeze_epochs must be >= 0"),
])
def test_text_freeze_epochs_bad_settings(overrides, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, overrides)


def test_schedule_bad_input():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))])
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWarmupSchedule(opt, total_steps=5, warmup_steps=6)
    with pytest.raises(ValueError, match="total_steps"):
        CosineWarmupSchedule(opt, total_steps=0)


# ----------------------------------------------------------------------------- mixup
def test_smooth_one_hot_and_soft_ce():
    t = smooth_one_hot(torch.tensor([0, 2]), 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(0.9 + 0.025) and t[0, 1] == pytest.approx(0.025)
    logits = torch.randn(2, 4, dtype=torch.float64)
    ref = torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 2]), label_smoothing=0.1)
    assert soft_target_cross_entropy(logits, t) == pytest.approx(float(ref), rel=1e-5)
    with pytest.raises(ValueError, match="labels must be in"):
        smooth_one_hot(torch.tensor([4]), 4)


def test_mixup_cutmix_blends_consistently():
    torch.manual_seed(0)
    B, C = 6, 7
    video = torch.randn(B, 3, 3, 8, 8)
    labels = torch.arange(B)  # distinct, so a clip and its flipped partner never share a class
    for switch in (0.0, 1.0):  # 0: always mixup, 1: always cutmix
        mix = MixupCutmix(C, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=switch, smoothing=0.0,
                          generator=torch.Generator().manual_seed(1))
        out, target = mix(video, labels)
        assert out.shape == video.shape and target.shape == (B, C)
        assert torch.allclose(target.sum(1), torch.ones(B))
        # the weight of a clip's own label equals the share of its own pixels (classes distinct across the flip)
        lam = float(target[0, labels[0]])
        if switch == 0.0:
            assert torch.allclose(out, video * lam + video.flip(0) * (1 - lam), atol=1e-6)
        else:
            own = (out == video).all(dim=(0, 1, 2)).float().mean()  # pixels kept in every frame
            assert float(own) == pytest.approx(lam, abs=1e-6)
    # reproducible from the generator state
    m1 = MixupCutmix(C, generator=torch.Generator().manual_seed(3))
    state = m1.state_dict()
    a, ta = m1(video, labels)
    m1.load_state_dict(state)
    b, tb = m1(video, labels)
    assert torch.equal(a, b) and torch.equal(ta, tb)


# ----------------------------------------------------------------------------- checkpoints
def test_atomic_save_and_latest_valid(tmp_path):
    d = str(tmp_path)
    good = {"model": {"w": torch.ones(2)}, "optimizer": {}, "scheduler": {}, "epoch": 0, "step": 3}
    ck.atomic_save(good, os.path.join(d, ck.checkpoint_name(3)))
    ck.atomic_save(dict(good, step=5, epoch=1), os.path.join(d, ck.checkpoint_name(5, epoch=1)))
    # a newer but torn file, and a newer one missing keys: both skipped
    with open(os.path.join(d, ck.checkpoint_name(9)), "wb") as f:
        f.write(b"PK\x03\x04 torn")
    ck.atomic_save({"model": {}}, os.path.join(d, ck.checkpoint_name(8)))
    msgs = []
    path, state = ck.find_latest_valid(d, log=msgs.append)
    assert path.endswith("epoch_0001_s000000005.pth") and state["step"] == 5
    assert len(msgs) == 2
    assert not [f for f in os.listdir(d) if f.endswith(".tmp")]
    ck.prune_step_checkpoints(d, keep=1)
    left = sorted(os.listdir(d))
    assert "step_s000000003.pth" not in left and "epoch_0001_s000000005.pth" in left
    with pytest.raises(ValueError, match="could not be read"):
        ck.load_checkpoint(os.path.join(d, ck.checkpoint_name(9)))


def test_rng_state_roundtrip():
    import random

    import numpy as np

    st = ck.get_rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    ck.set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_non_finite_loss_error_message():
    from xclip.engine.trainer import NonFiniteLossError

    e = NonFiniteLossError(17, 2, math.nan)
    assert "step 17" in str(e) and "epoch 2" in str(e)
