"""xclip_kernels.transformers.apply_to on transformers' XCLIPModel and TimesformerModel.

float64 on the CPU: the patched model equals the unpatched one to 1e-10 (logits and every
parameter's gradient), and the fused ops are really called (counted).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xclip_kernels as xk
from xclip_kernels.transformers import SUPPORTED_MODELS, apply_to, patched_copy, patched_modules, remove_from

transformers = pytest.importorskip("transformers")

TOL = 1e-10


def tiny_xclip(num_frames=3, vision_layers=2, mit_layers=1, prompt_layers=2, seed=0):
    from transformers import XCLIPConfig, XCLIPModel

    cfg = XCLIPConfig(
        text_config=dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=vision_layers,
                           num_attention_heads=2, image_size=24, patch_size=8, num_frames=num_frames,
                           mit_hidden_size=16, mit_intermediate_size=32, mit_num_hidden_layers=mit_layers,
                           mit_num_attention_heads=2),
        projection_dim=16, prompt_layers=prompt_layers, prompt_num_attention_heads=2,
    )
    torch.manual_seed(seed)
    model = XCLIPModel(cfg).double().eval()
    with torch.no_grad():  # post_init leaves some tensors at zero / one; make every path matter
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tiny_timesformer(num_frames=5, seed=0, classify=False):
    from transformers import TimesformerConfig, TimesformerForVideoClassification, TimesformerModel

    cfg = TimesformerConfig(image_size=16, patch_size=8, num_frames=num_frames, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=3)
    torch.manual_seed(seed)
    cls = TimesformerForVideoClassification if classify else TimesformerModel
    return cls(cfg).double().eval()


class OpCounter:
    """Counts calls of xk's public ops (the patched forwards look them up on the module)."""

    def __init__(self, monkeypatch):
        self.calls = {"cross_frame_attn": 0, "intra_frame_attn": 0, "prompt_cross_attn": 0}
        for name in self.calls:
            real = getattr(xk, name)

            def wrapped(*a, _real=real, _name=name, **k):
                self.calls[_name] += 1
                return _real(*a, **k)

            monkeypatch.setattr(xk, name, wrapped)


def xclip_inputs(model, batch=2, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    vc = model.config.vision_config
    video = torch.randn(batch, vc.num_frames, 3, vc.image_size, vc.image_size, generator=g, dtype=torch.float64)
    ids = torch.randint(1, model.config.text_config.vocab_size, (classes, 7), generator=g)
    return dict(input_ids=ids, pixel_values=video)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check_same(ref_out, out, ref_model, model):
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, rtol=0, atol=TOL)
    g_ref, g = _grads(ref_model), _grads(model)
    assert g.keys() == g_ref.keys() and len(g) > 10
    for n in g_ref:
        torch.testing.assert_close(g[n], g_ref[n], rtol=0, atol=TOL, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("num_frames,prompt_layers", [(3, 2), (1, 1)])
def test_xclip_patched_equals_unpatched_float64(monkeypatch, num_frames, prompt_layers):
    ref = tiny_xclip(num_frames=num_frames, prompt_layers=prompt_layers)
    model = copy.deepcopy(ref)
    assert apply_to(model) is model
    assert not patched_modules(ref)
    inputs = xclip_inputs(ref)
    w = torch.randn(2, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    out_ref = ref(**inputs).logits_per_video
    (out_ref * w).sum().backward()
    count = OpCounter(monkeypatch)
    out = model(**inputs).logits_per_video
    (out * w).sum().backward()

    vl = model.config.vision_config.num_hidden_layers
    assert count.calls == {"intra_frame_attn": vl, "cross_frame_attn": vl + model.config.vision_config.mit_num_hidden_layers,
                           "prompt_cross_attn": prompt_layers}
    _check_same(out_ref, out, ref, model)
    # weights untouched: same state dict keys and values
    sd, sd_ref = model.state_dict(), ref.state_dict()
    assert sd.keys() == sd_ref.keys() and all(torch.equal(sd[k], sd_ref[k]) for k in sd)


def test_xclip_patch_idempotent_removable_and_copy(monkeypatch):
    model = tiny_xclip()
    inputs = xclip_inputs(model)
    with torch.no_grad():
        ref = model(**inputs).logits_per_video
    apply_to(model)
    names = patched_modules(model)
    # 2 vision layers + their message attentions, 1 MIT attention, 2 prompt cross-attentions
    assert len(names) == 7, names
    apply_to(model)
    assert patched_modules(model) == names  # applying twice changes nothing
    twin = patched_copy(model)
    assert patched_modules(twin) == names and twin is not model
    count = OpCounter(monkeypatch)
    with torch.no_grad():
        torch.testing.assert_close(twin(**inputs).logits_per_video, ref, rtol=0, atol=TOL)
    assert count.calls["intra_frame_attn"] == 2
    remove_from(model)
    assert patched_modules(model) == []
    count.calls["intra_frame_attn"] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits_per_video, ref, rtol=0, atol=0)
    assert count.calls["intra_frame_attn"] == 0  # unpatched: transformers' own forward again


def test_xclip_dropout_in_training_falls_back_to_transformers(monkeypatch):
    model = tiny_xclip()
    model.config.vision_config.attention_dropout = 0.5
    for m in model.vision_model.modules():
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = 0.5
    apply_to(model).train()
    count = OpCounter(monkeypatch)
    model(**xclip_inputs(model)).logits_per_video.sum().backward()
    assert count.calls["intra_frame_attn"] == 0  # dropout on attention weights: not expressible, fall back


@pytest.mark.parametrize("classify", [False, True])
def test_timesformer_patched_equals_unpatched_float64(monkeypatch, classify):
    ref = tiny_timesformer(classify=classify)
    model = copy.deepcopy(ref)
    apply_to(model)
    assert len(patched_modules(model)) == 2
    g = torch.Generator().manual_seed(3)
    video = torch.randn(2, 5, 3, 16, 16, generator=g, dtype=torch.float64)

    def run(m):
        out = m(pixel_values=video)
        y = out.logits if classify else out.last_hidden_state
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=y.dtype)
        (y * w).sum().backward()
        return y

    y_ref = run(ref)
    count = OpCounter(monkeypatch)
    y = run(model)
    assert count.calls["cross_frame_attn"] == 2
    _check_same(y_ref, y, ref, model)


def test_timesformer_without_temporal_attention_is_refused():
    from transformers import TimesformerConfig, TimesformerModel

    m = TimesformerModel(TimesformerConfig(image_size=16, patch_size=8, num_frames=2, hidden_size=32,
                                           num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                           attention_type="space_only"))
    with pytest.raises(ValueError, match="divided_space_time"):
        apply_to(m)


@pytest.mark.parametrize("bad", [nn.Linear(2, 2), "XCLIPModel", None])
def test_other_models_raise_value_error_naming_supported(bad):
    with pytest.raises(ValueError) as e:
        apply_to(bad)
    msg = str(e.value)
    assert all(name in msg for name in ("XCLIPModel", "TimesformerModel")), msg
    assert SUPPORTED_MODELS[0] in msg


def test_bert_is_not_supported():
    from transformers import BertConfig, BertModel

    m = BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=8))
    with pytest.raises(ValueError, match="BertModel"):
        apply_to(m)
