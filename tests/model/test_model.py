"""X-CLIP model: forward API, fidelity to the official computation, backends, compile, checkpointing."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import xclip
import xclip_kernels as xk
from xclip.model.model import XCLIP
from xclip.model.reference import PlainXCLIP

# Two heads in every attention (vision, text, MIT, prompts): one head cannot tell a transposed head split.
TINY = dict(vision_width=64, vision_layers=2, image_resolution=32, vision_patch_size=8, transformer_width=64,
            transformer_layers=2, transformer_heads=2, embed_dim=32, vocab_size=500, context_length=16,
            vision_heads=2, mit_heads=2, prompt_heads=2)


def tiny(num_frames=4, seed=0, **kw) -> XCLIP:
    torch.manual_seed(seed)
    m = xclip.create_model("ViT-B/32", num_frames=num_frames, **{**TINY, **kw}).eval()
    m.set_attn_backend("torch")
    with torch.no_grad():  # make the new modules matter: non-trivial weights everywhere
        for name, p in m.named_parameters():
            if name.endswith("bias") or name.startswith("prompts_generator.alpha"):
                p.add_(0.05 * torch.randn_like(p))
            elif p.dim() == 2 and (name.startswith(_NEW_MODULES) or ".message_" in name):
                p.mul_(10.0)  # X-CLIP's new modules start at std 0.02: scaled up, each one moves the logits
        m.prompts_generator.alpha.add_(0.4)
    return m


_NEW_MODULES = ("mit.resblocks.", "prompts_generator.decoder.")


def tokens(K=3, L=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, 400, (K, L), generator=g)
    t[:, 0] = 498
    for i in range(K):
        end = 4 + i % (L - 5)
        t[i, end] = 499  # <eot>: the largest id
        t[i, end + 1:] = 0
    return t


def video(B=2, T=4, R=32, seed=2, dtype=torch.float32):
    return torch.randn(B, T, 3, R, R, generator=torch.Generator().manual_seed(seed)).to(dtype)


# --- tests ----------------------------------------------------------------------------------------


def test_shapes_and_api():
    m = tiny()
    v, t = video(), tokens()
    with torch.no_grad():
        logits = m(v, t)
        ve, pe = m.encode_video(v)
        te = m.encode_text(t)
        again = m.logits_from_features(ve, pe, te)
    assert logits.shape == (2, 3) and ve.shape == (2, 32) and pe.shape == (2, 4, 16, 32) and te.shape == (3, 32)
    torch.testing.assert_close(again, logits, rtol=0, atol=0)
    assert torch.isfinite(logits).all()
    assert isinstance(m.config, xclip.XCLIPConfig)
    # logit_scale applied: |cosine| <= 1
    assert logits.abs().max() <= m.logit_scale.exp() + 1e-5


def test_matches_official_computation_float64():
    """Our model equals the plain official-style computation (xclip.model.reference) on the same weights."""
    m = tiny(num_frames=3, vision_layers=3, mit_layers=2).double()
    ref_model = PlainXCLIP.from_model(m).eval()
    v, t = video(T=3, dtype=torch.float64), tokens(K=5)
    with torch.no_grad():
        ours = m(v, t)
        ref = ref_model(v, t)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_state_dict_uses_official_keys():
    keys = set(tiny().state_dict())
    for k in ("visual.transformer.resblocks.0.message_attn.in_proj_weight",
              "visual.transformer.resblocks.1.attn.in_proj_weight", "visual.transformer.resblocks.0.message_fc.weight",
              "mit.positional_embedding", "mit.resblocks.0.attn.in_proj_weight",
              "prompts_generator.decoder.1.cross_attn.q_proj.weight", "prompts_generator.decoder.0.mlp.3.weight",
              "prompts_generator.alpha", "prompts_visual_proj", "prompts_visual_ln.weight", "visual.proj",
              "text_projection", "token_embedding.weight", "transformer.resblocks.1.mlp.c_proj.bias", "logit_scale"):
        assert k in keys, k
    assert not any("q_proj.bias" in k for k in keys)


def test_create_model_archs_and_overrides():
    with torch.device("meta"):
        for arch, width, patch in (("ViT-B/32", 768, 32), ("ViT-B/16", 768, 16), ("ViT-L/14", 1024, 14),
                                   ("ViT-L/14@336", 1024, 14)):
            m = xclip.create_model(arch, num_frames=16)
            assert m.config.vision_width == width and m.config.vision_patch_size == patch
            assert m.config.num_frames == 16 and m.mit.positional_embedding.shape == (1, 16, m.config.embed_dim)
            assert m.config.mit_layers == 1 and m.config.prompt_layers == 2 and m.config.prompt_alpha == 0.1
            assert m.config.vision_num_heads == width // 64
    cfg = xclip.XCLIPConfig(**{**TINY, "num_frames": 2})
    assert xclip.create_model(cfg, num_frames=None).config.num_frames == 2
    assert xclip.create_model(cfg.to_dict(), num_frames=3).config.num_frames == 3
    assert xclip.XCLIPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown architecture"):
        xclip.create_model("ViT-H/99")
    with pytest.raises(ValueError, match="unknown XCLIPConfig fields"):
        xclip.create_model("ViT-B/32", vision_widht=3)
    with pytest.raises(ValueError, match="multiple of"):
        xclip.create_model("ViT-B/32", image_resolution=33)
    with pytest.raises(ValueError, match="divisible"):
        xclip.create_model("ViT-B/32", **{**TINY, "vision_heads": 5})


def test_bad_inputs_raise_value_error():
    m = tiny()
    t = tokens()
    with pytest.raises(ValueError, match="T=3 frames"):
        m(video(T=3), t)
    with pytest.raises(ValueError, match="expected 32x32"):
        m(video(R=40), t)
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        m(torch.randn(2, 4, 32, 32), t)
    with pytest.raises(ValueError, match="integer tensor"):
        m(video(), t.float())
    with pytest.raises(ValueError, match="context_length"):
        m(video(), torch.ones(2, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="float tensor"):
        m(video().to(torch.uint8), t)


def test_cross_frame_off_ablation():
    m = tiny(cross_frame=False)
    assert not hasattr(m, "mit")
    assert not any("message" in k for k in m.state_dict())
    v = video()
    with torch.no_grad():
        ve, pe = m.encode_video(v)
        # frames are independent: the video embedding is the mean of per-frame embeddings
        per_frame = torch.stack([m.encode_video(v[:, i:i + 1])[0] for i in range(4)], 1).mean(1)
        logits = m(v, tokens())
    torch.testing.assert_close(ve, per_frame, rtol=1e-5, atol=1e-6)
    assert logits.shape == (2, 3)


def test_frames_interact_only_with_cross_frame():
    m = tiny()
    v = video()
    v2 = v.clone()
    v2[:, 3] += 1.0  # perturb the last frame only
    with torch.no_grad():
        _, p1 = m.encode_video(v)
        _, p2 = m.encode_video(v2)
    # messages carry frame 3's change into frame 0's patch tokens
    assert (p1[:, 0] - p2[:, 0]).abs().max() > 1e-4


def test_backward_and_grad_checkpointing_same_gradients():
    m = tiny()
    m.train()
    v, t = video(), tokens()

    def grads(model):
        model.zero_grad()
        model(v, t).square().sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    g0 = grads(m)
    m.set_grad_checkpointing(True)
    g1 = grads(m)
    assert set(g0) == set(g1) and len(g0) == len(list(m.parameters()))
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7, msg=k)


def test_drop_path_is_per_sample_and_off_in_eval():
    m = tiny(drop_path=0.5)
    v, t = video(), tokens()
    with torch.no_grad():
        a, b = m(v, t), m(v, t)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        m.train()
        torch.manual_seed(0)
        c = m(v, t)
        torch.manual_seed(1)
        d = m(v, t)
    assert not torch.allclose(c, d)
    from xclip.model.model import drop_path

    x = torch.ones(1000, 5, 7)
    y = drop_path(x, 0.3, True)
    per_sample = y.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.7).all(1)).all()  # whole samples kept or dropped
    assert 0.2 < (per_sample[:, 0] == 0).float().mean() < 0.4


def test_frozen_text_encoder_cache():
    m = tiny()
    m.freeze_text_encoder()
    assert not any(p.requires_grad for p in m.text_parameters())
    t = tokens()
    a = m.encode_text(t)
    assert m.encode_text(t) is a  # cached
    assert m.encode_text(tokens(seed=5)) is not a
    b = m.encode_text(t)
    with torch.no_grad():
        m.ln_final.bias.add_(1.0)  # weights changed: the cache is invalid
    c = m.encode_text(t)
    assert c is not b and not torch.allclose(b, c)
    m.train()
    loss = m(video(), t).sum()
    loss.backward()
    assert m.token_embedding.weight.grad is None and m.visual.conv1.weight.grad is not None


def test_set_attn_backend():
    m = tiny()
    m.set_attn_backend("torch")
    blk = m.visual.transformer.resblocks[0]
    assert blk.attn.backend == "torch" and blk.message_attn.backend == "torch"
    assert m.prompts_generator.decoder[0].cross_attn.backend == "torch"
    m.set_attn_backend(None)
    assert blk.attn.backend is None
    with pytest.raises(ValueError, match="backend"):
        m.set_attn_backend("cuDNN")


def _usable_backends():
    t = torch.zeros(1)
    names = []
    for name, st in xk.available_backends().items():
        if st.available:
            names.append(name)
    del t
    return names


# Tolerances follow flash-attention's rule: a backend's error against the float64 oracle may be at most twice
# the error of the eager (torch backend) model in the same dtype, plus a small atol. Measured on the tiny model
# (CPU, float32): eager error 2.3e-6, so the bound is about 5.5e-6; making the prompt attention uniform moves
# the logits by 1.3, removing the message attention by 0.23, both far outside it (bf16 eager error: about 0.04).
ATOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 5e-3}


def oracle_logits(m, v, t):
    """The plain official-style model (xclip.model.reference) in float64 on a copy of ``m``'s weights."""
    ref = PlainXCLIP.from_model(m).to(device=v.device, dtype=torch.float64).eval()
    with torch.no_grad():
        return ref(v.double(), t)


def assert_within_eager_error(out, eager, oracle, dtype, msg=""):
    assert torch.isfinite(out).all(), f"{msg}: non-finite logits"
    err = float((out.double() - oracle).abs().max())
    eager_err = float((eager.double() - oracle).abs().max())
    bound = 2 * eager_err + ATOL[dtype]
    assert err <= bound, f"{msg}: error {err:.3e} vs the float64 oracle exceeds 2 x eager {eager_err:.3e} + atol"


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_backends_match_oracle_within_eager_error(backend):
    if backend not in _usable_backends():
        pytest.skip(f"{backend} backend unavailable: {xk.available_backends()[backend].reason}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cuda" and dev == "cpu":
        pytest.skip("the CUDA backend needs a GPU")
    m = tiny().to(dev)
    v, t = video().to(dev), tokens().to(dev)
    oracle = oracle_logits(m, v, t)
    with torch.no_grad():
        eager = m.set_attn_backend("torch")(v, t)
        out = m.set_attn_backend(backend)(v, t)
    assert_within_eager_error(out, eager, oracle, torch.float32, backend)


def _remove(m, component: str):
    """A copy of ``m`` without one component (its output projection zeroed, or its queries: uniform attention)."""
    m = copy.deepcopy(m)
    with torch.no_grad():
        if component == "message attention":
            for b in m.visual.transformer.resblocks:
                b.message_attn.out_proj.weight.zero_()
                b.message_attn.out_proj.bias.zero_()
        elif component == "MIT attention":
            for b in m.mit.resblocks:
                b.attn.out_proj.weight.zero_()
                b.attn.out_proj.bias.zero_()
        elif component == "prompt attention (uniform)":
            for layer in m.prompts_generator.decoder:
                layer.cross_attn.q_proj.weight.zero_()
    return m


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_same_dtype_bound_sees_each_component_removed(dtype):
    """The backend tolerance (2 x eager same-dtype error + atol) is tight enough to see what it tests: a backend
    that lost the message attention, the MIT attention or the prompt attention's queries would land further from
    the float64 oracle than the bound, with a 2x margin. Measured on CPU (this machine, tiny model): bf16 eager
    error 0.028 -> bound 0.061, fp16 0.0041 -> 0.0092; removing the message attention moves the logits by 0.23,
    the MIT attention by 0.89, uniform prompt attention by 1.26. On a GPU, test_backends_16bit_on_gpu sizes the
    same bound from the GPU's own eager error."""
    m = tiny()
    v, t = video(), tokens()
    oracle = oracle_logits(m, v, t)
    with torch.no_grad():
        eager = copy.deepcopy(m).to(dtype).set_attn_backend("torch")(v.to(dtype), t)
    bound = 2 * float((eager.double() - oracle).abs().max()) + ATOL[dtype]
    for component in ("message attention", "MIT attention", "prompt attention (uniform)"):
        moved = float((oracle_logits(_remove(m, component), v, t) - oracle).abs().max())
        assert moved > 2 * bound, f"{dtype}: removing the {component} moves the logits by {moved:.3g}, " \
                                  f"within 2x the tolerance {bound:.3g}: the tolerance cannot see it"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backends_16bit_on_gpu(dtype):
    m = tiny().cuda()
    v, t = video().cuda(), tokens().cuda()
    oracle = oracle_logits(m, v, t)
    m16 = copy.deepcopy(m).to(dtype)
    with torch.no_grad():
        eager = m16.set_attn_backend("torch")(v.to(dtype), t)
        for name in _usable_backends():
            out = m16.set_attn_backend(name)(v.to(dtype), t)
            assert_within_eager_error(out, eager, oracle, dtype, name)
    # the bound (from this GPU's eager error) still sees a backend that lost the message attention
    bound = 2 * float((eager.double() - oracle).abs().max()) + ATOL[dtype]
    moved = float((oracle_logits(_remove(m, "message attention"), v, t) - oracle).abs().max())
    assert moved > 2 * bound, f"{dtype}: removing the message attention moves the logits by {moved:.3g} only"


def test_torch_compile_fullgraph_matches_eager():
    m = tiny()
    v, t = video(), tokens()
    with torch.no_grad():
        eager = m(v, t)
    torch._dynamo.reset()
    # aot_eager traces through the custom ops' fake kernels and autograd (no C++ compiler needed on CPU)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        out = compiled(v, t)
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    m.train()
    loss = torch.compile(m, fullgraph=True, backend="aot_eager")(v, t).sum()
    loss.backward()
    assert m.visual.conv1.weight.grad is not None


@pytest.mark.gpu
def test_torch_compile_inductor_gpu():
    m = tiny().cuda().set_attn_backend(None)
    v, t = video().cuda(), tokens().cuda()
    with torch.no_grad():
        eager = m(v, t)
        out = torch.compile(m, fullgraph=True)(v, t)
    torch.testing.assert_close(out, eager, rtol=1e-3, atol=1e-3)


def test_logit_scale_init():
    assert math.isclose(float(tiny().logit_scale.detach()), math.log(1 / 0.07), rel_tol=1e-6)
