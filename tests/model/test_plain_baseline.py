"""The plain official-style reference model (xclip.model.reference) computes what our model computes.

It loads our model's weights unchanged (official key layout) and gives the
same logits, features and gradients in float32, so it can serve as the tests'
oracle and the speed comparison in ``xclip bench`` is between two
implementations of one function.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

import xclip
from xclip.apps.bench import TINY_ARCH
from xclip.model.reference import PlainConfig, PlainXCLIP


def _pair(seed: int, frames: int = 4, **overrides):
    torch.manual_seed(seed)
    ours = xclip.create_model("ViT-B/16", num_frames=frames, **{**TINY_ARCH, **overrides}).set_attn_backend("torch")
    # perturb every parameter so that no zero bias / unit norm hides a mismatch
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plain = PlainXCLIP.from_state_dict(ours.state_dict(), config=ours.config)
    return ours.eval(), plain.eval()


def _inputs(cfg, batch: int, frames: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, frames, 3, cfg.image_resolution, cfg.image_resolution, generator=g)
    texts = [f"a video of class number {k} {'and more ' * k}" for k in range(classes)]
    return video, xclip.tokenize(texts)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize(
    "seed, frames, batch, classes, overrides",
    [
        (0, 4, 2, 5, {}),
        (1, 3, 1, 1, dict(mit_layers=2, prompt_layers=1)),
        (2, 8, 3, 7, dict(vision_heads=4, mit_heads=4, prompt_heads=4, prompt_layers=3, mlp_ratio=2)),
    ],
)
def test_same_logits_as_our_model(seed, frames, batch, classes, overrides):
    ours, plain = _pair(seed, frames, **overrides)
    video, tokens = _inputs(ours.config, batch, frames, classes, seed)
    with torch.no_grad():
        t_ours, t_plain = ours.encode_text(tokens), plain.encode_text(tokens)
        v_ours, p_ours = ours.encode_video(video)
        v_plain, p_plain = plain.encode_video(video)
        logits_ours = ours(video, tokens)
        logits_plain = plain(video, tokens)
    assert _rel(t_plain, t_ours) < 1e-5
    assert _rel(v_plain, v_ours) < 1e-5
    assert p_plain.shape == p_ours.shape
    assert _rel(p_plain, p_ours) < 1e-5
    assert logits_plain.shape == (batch, classes)
    assert torch.isfinite(logits_plain).all()
    assert _rel(logits_plain, logits_ours) < 1e-5
    # the logits are not trivially equal (e.g. all one value): classes are told apart
    if logits_ours.numel() > 1:
        assert logits_ours.std() > 1e-3


def test_same_state_dict_keys_and_shapes():
    ours, plain = _pair(3)
    a, b = ours.state_dict(), plain.state_dict()
    assert set(a) == set(b)
    assert all(a[k].shape == b[k].shape for k in a)
    # and back: plain weights load strictly into our model
    ours2 = xclip.create_model("ViT-B/16", num_frames=4, **TINY_ARCH)
    ours2.load_state_dict(b, strict=True)


def test_same_gradients_frozen_text():
    ours, plain = _pair(4)
    video, tokens = _inputs(ours.config, 2, 4, 3, 4)
    labels = torch.tensor([2, 0])
    grads = []
    for m in (ours, plain):
        m.train()
        with torch.no_grad():
            text = m.encode_text(tokens)
        v, p = m.encode_video(video)
        F.cross_entropy(m.logits_from_features(v, p, text), labels).backward()
        grads.append({n: q.grad for n, q in m.named_parameters() if q.grad is not None})
    g_ours, g_plain = grads
    assert set(g_ours) == set(g_plain)
    assert any(k.startswith("visual.transformer.resblocks.0.message_attn") for k in g_ours)
    for name in g_ours:
        assert _rel(g_plain[name], g_ours[name]) < 1e-4, name


@pytest.mark.parametrize("arch", ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336"])
def test_full_size_architectures_match(arch):
    with torch.device("meta"):
        ours = xclip.create_model(arch, num_frames=16)
        cfg = PlainXCLIP.config_from_state_dict(ours.state_dict())
        plain = PlainXCLIP(cfg)
    assert cfg.num_frames == 16
    assert cfg.vision_heads == ours.config.vision_num_heads
    assert cfg.text_heads == ours.config.transformer_heads
    assert (cfg.vision_layers, cfg.vision_width, cfg.vision_patch_size, cfg.image_resolution) == (
        ours.config.vision_layers,
        ours.config.vision_width,
        ours.config.vision_patch_size,
        ours.config.image_resolution,
    )
    a, b = ours.state_dict(), plain.state_dict()
    assert set(a) == set(b)
    assert all(a[k].shape == b[k].shape for k in a)
    # the named-arch constructor agrees with the inferred one
    with torch.device("meta"):
        assert PlainXCLIP.from_arch(arch, num_frames=16).config == cfg


def test_bad_inputs_raise_value_error():
    _, plain = _pair(5)
    with pytest.raises(ValueError, match="frames"):
        plain.encode_video(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        plain.encode_video(torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[K, L\]"):
        plain.encode_text(torch.zeros(77, dtype=torch.long))
    with pytest.raises(ValueError, match="missing"):
        PlainXCLIP.from_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown arch"):
        PlainXCLIP.from_arch("ViT-H/99")
    with pytest.raises(ValueError, match="overrides"):
        PlainXCLIP.config_from_state_dict(plain.state_dict(), heads=3)
    with pytest.raises(ValueError, match="cross_frame"):
        PlainConfig.from_xclip_config(xclip.XCLIPConfig(**{**TINY_ARCH, "cross_frame": False}))


def test_independent_of_our_attention_ops():
    """The oracle must not run the code it checks: no xclip_kernels op is called in its forward."""
    import inspect

    import xclip.model.reference as reference
    import xclip_kernels as xk
    import xclip_kernels.nn as xk_nn

    imports = re.findall(r"^\s*(?:from|import)\s+(\S+)", inspect.getsource(reference), re.M)
    assert not [m for m in imports if m.startswith(("xclip_kernels", ".model", "xclip.model.model"))], imports

    ours, plain = _pair(6)
    video, tokens = _inputs(ours.config, 1, 4, 2, 6)
    ops = ("cross_frame_attn", "intra_frame_attn", "prompt_cross_attn")
    names = ops + tuple(f"{n}_packed" for n in ops)  # the model calls the packed-projection variants
    homes = (xk, xk_nn)  # the public functions, and the names the drop-in modules imported
    saved = {(h, n): getattr(h, n) for h in homes for n in names if hasattr(h, n)}
    calls = []
    try:
        for (h, n), f in saved.items():
            setattr(h, n, lambda *a, n=n, f=f, **k: (calls.append(n), f(*a, **k))[1])
        with torch.no_grad():
            plain(video, tokens)
        assert calls == []
        with torch.no_grad():
            ours(video, tokens)  # the probe works: our model does call them
        assert {c.removesuffix("_packed") for c in calls} == set(ops), calls
    finally:
        for (h, n), f in saved.items():
            setattr(h, n, f)


def test_old_loader_name_is_a_deprecated_alias():
    from xclip.apps import bench

    with pytest.warns(DeprecationWarning, match="xclip.model.reference"):
        assert bench.load_plain_module().PlainXCLIP is PlainXCLIP
