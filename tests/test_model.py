"""X-CLIP model: forward API, fidelity to the official computation, backends, compile, checkpointing."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import xclip
import xclip_kernels as xk
from xclip.model.model import XCLIP

TINY = dict(vision_width=64, vision_layers=2, image_resolution=32, vision_patch_size=8, transformer_width=64,
            transformer_layers=2, transformer_heads=2, embed_dim=32, vocab_size=500, context_length=16)


def tiny(num_frames=4, seed=0, **kw) -> XCLIP:
    torch.manual_seed(seed)
    m = xclip.create_model("ViT-B/32", num_frames=num_frames, **{**TINY, **kw}).eval()
    m.set_attn_backend("torch")
    with torch.no_grad():  # make the new modules matter: non-trivial weights everywhere
        for name, p in m.named_parameters():
            if name.endswith("bias") or name.startswith("prompts_generator.alpha"):
                p.add_(0.05 * torch.randn_like(p))
    return m


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


# --- an independent re-statement of the official computation (sequence-first, nn.MultiheadAttention) --------


def _mha(prefix, sd, heads, q, k, v, mask=None):
    E = q.shape[-1]
    return F.multi_head_attention_forward(
        q, k, v, E, heads, sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"], None, None, False, 0.0,
        sd[prefix + "out_proj.weight"], sd[prefix + "out_proj.bias"], need_weights=False, attn_mask=mask)[0]


def _ln(prefix, sd, x):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + "weight"], sd[prefix + "bias"])


def _mlp(prefix, sd, x):
    h = F.linear(x, sd[prefix + "c_fc.weight"], sd[prefix + "c_fc.bias"])
    h = h * torch.sigmoid(1.702 * h)
    return F.linear(h, sd[prefix + "c_proj.weight"], sd[prefix + "c_proj.bias"])


def official_logits(sd, cfg, image, text):
    """The official X-CLIP forward (microsoft/VideoX models/{xclip,cct,mit,prompt}.py) written out from the paper's
    description with functional ops and sequence-first tensors, on the same state dict."""
    b, t, c, h, w = image.shape
    x = F.conv2d(image.reshape(-1, c, h, w), sd["visual.conv1.weight"], stride=cfg.vision_patch_size)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = sd["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype)
    x = torch.cat([cls, x], dim=1) + sd["visual.positional_embedding"]
    x = _ln("visual.ln_pre.", sd, x).permute(1, 0, 2)  # [L, BT, d]
    vh = cfg.vision_num_heads
    for i in range(cfg.vision_layers):
        p = f"visual.transformer.resblocks.{i}."
        l, bt, d = x.shape
        xv = x.view(l, b, t, d)
        msg = F.linear(xv[0], sd[p + "message_fc.weight"], sd[p + "message_fc.bias"])  # [b, t, d]
        msg = msg.permute(1, 0, 2)  # [t, b, d]
        mln = _ln(p + "message_ln.", sd, msg)
        msg = msg + _mha(p + "message_attn.", sd, vh, mln, mln, mln)
        msg = msg.permute(1, 0, 2).reshape(1, bt, d)
        x = torch.cat([x, msg], dim=0)
        y = _ln(p + "ln_1.", sd, x)
        x = x + _mha(p + "attn.", sd, vh, y, y, y)
        x = x[:l]
        x = x + _mlp(p + "mlp.", sd, _ln(p + "ln_2.", sd, x))
    x = x.permute(1, 0, 2)
    cls_x = _ln("visual.ln_post.", sd, x[:, 0]) @ sd["visual.proj"]
    img = _ln("prompts_visual_ln.", sd, x[:, 1:]) @ sd["prompts_visual_proj"]
    cls_x = cls_x.view(b, t, -1)
    img = img.view(b, t, -1, cls_x.shape[-1]).mean(dim=1)
    # MIT
    ori = cls_x
    m = (cls_x + sd["mit.positional_embedding"]).permute(1, 0, 2)
    for i in range(cfg.mit_layers):
        p = f"mit.resblocks.{i}."
        y = _ln(p + "ln_1.", sd, m)
        m = m + _mha(p + "attn.", sd, cfg.mit_num_heads, y, y, y)
        m = m + _mlp(p + "mlp.", sd, _ln(p + "ln_2.", sd, m))
    video_features = (m.permute(1, 0, 2) + ori).mean(dim=1)
    # text
    L = text.shape[1]
    z = sd["token_embedding.weight"][text] + sd["positional_embedding"][:L]
    z = z.permute(1, 0, 2)
    mask = torch.full((L, L), float("-inf"), dtype=z.dtype).triu_(1)
    for i in range(cfg.transformer_layers):
        p = f"transformer.resblocks.{i}."
        y = _ln(p + "ln_1.", sd, z)
        z = z + _mha(p + "attn.", sd, cfg.transformer_heads, y, y, y, mask)
        z = z + _mlp(p + "mlp.", sd, _ln(p + "ln_2.", sd, z))
    z = _ln("ln_final.", sd, z.permute(1, 0, 2))
    text_features = z[torch.arange(z.shape[0]), text.argmax(dim=-1)] @ sd["text_projection"]
    # prompts
    tf = text_features.unsqueeze(0).expand(b, -1, -1)
    vis = _ln("prompts_generator.norm.", sd, img)
    q = tf
    H = cfg.prompt_num_heads
    for i in range(cfg.prompt_layers):
        p = f"prompts_generator.decoder.{i}."
        n1 = _ln(p + "norm1.", sd, q)
        B, N, C = n1.shape
        qq = F.linear(n1, sd[p + "cross_attn.q_proj.weight"]).reshape(B, N, H, C // H).permute(0, 2, 1, 3)
        kk = F.linear(vis, sd[p + "cross_attn.k_proj.weight"]).reshape(B, -1, H, C // H).permute(0, 2, 1, 3)
        vv = F.linear(vis, sd[p + "cross_attn.v_proj.weight"]).reshape(B, -1, H, C // H).permute(0, 2, 1, 3)
        a = ((qq @ kk.transpose(-2, -1)) * (C // H) ** -0.5).softmax(dim=-1)
        o = (a @ vv).transpose(1, 2).reshape(B, N, C)
        q = q + F.linear(o, sd[p + "cross_attn.proj.weight"], sd[p + "cross_attn.proj.bias"])
        hdn = F.linear(_ln(p + "norm3.", sd, q), sd[p + "mlp.0.weight"], sd[p + "mlp.0.bias"])
        hdn = hdn * torch.sigmoid(1.702 * hdn)
        q = q + F.linear(hdn, sd[p + "mlp.3.weight"], sd[p + "mlp.3.bias"])
    tf = tf + sd["prompts_generator.alpha"] * q
    vf = video_features / video_features.norm(dim=-1, keepdim=True)
    tf = tf / tf.norm(dim=-1, keepdim=True)
    return torch.einsum("bd,bkd->bk", vf, sd["logit_scale"].exp() * tf)


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
    m = tiny(num_frames=3, vision_layers=3, mit_layers=2).double()
    sd = {k: v.double() for k, v in m.state_dict().items()}
    v, t = video(T=3, dtype=torch.float64), tokens(K=5)
    with torch.no_grad():
        ours = m(v, t)
        ref = official_logits(sd, m.config, v, t)
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


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_backends_match_torch_backend(backend):
    if backend not in _usable_backends():
        pytest.skip(f"{backend} backend unavailable: {xk.available_backends()[backend].reason}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cuda" and dev == "cpu":
        pytest.skip("the CUDA backend needs a GPU")
    m = tiny().to(dev)
    v, t = video().to(dev), tokens().to(dev)
    with torch.no_grad():
        ref = m.set_attn_backend("torch")(v, t)
        out = m.set_attn_backend(backend)(v, t)
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_backends_16bit_on_gpu(dtype):
    m = tiny().cuda()
    v, t = video().cuda(), tokens().cuda()
    with torch.no_grad():
        ref = m.set_attn_backend("torch")(v, t)
        m16 = copy.deepcopy(m).to(dtype)
        for name in _usable_backends():
            out = m16.set_attn_backend(name)(v.to(dtype), t).float()
            tol = 5e-2 if dtype == torch.bfloat16 else 2e-2
            torch.testing.assert_close(out, ref, rtol=tol, atol=tol * float(m.logit_scale.exp()), msg=name)


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
