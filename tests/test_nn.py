"""xclip_kernels.nn: drop-in modules with nn.MultiheadAttention's parameter layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xclip_kernels as xk
from xclip_kernels.nn import CrossFrameAttention, IntraFrameAttention, PromptCrossAttention


def _mha(E, H, seed=0, bias=True):
    torch.manual_seed(seed)
    m = nn.MultiheadAttention(E, H, batch_first=True, bias=bias).double()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def _reference(mha, q, kv):
    return mha(q, kv, kv, need_weights=False)[0]


@pytest.mark.parametrize("B,T,E,H", [(1, 1, 32, 1), (3, 8, 64, 2), (2, 7, 96, 3)])
def test_cross_frame_attention_equals_mha(B, T, E, H):
    ref = _mha(E, H)
    mod = CrossFrameAttention(E, H, backend="torch").double()
    mod.load_state_dict(ref.state_dict())  # the same keys: existing checkpoints load unchanged
    x = torch.randn(B, T, E, dtype=torch.float64, requires_grad=True)
    out = mod(x)
    torch.testing.assert_close(out, _reference(ref, x, x), rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, g)
    (gr,) = torch.autograd.grad(_reference(ref, x, x), x, g)
    torch.testing.assert_close(gx, gr, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("F_,N,M,E,H", [(2, 5, 1, 64, 2), (3, 17, 3, 32, 1), (1, 1, 8, 64, 4)])
def test_intra_frame_attention_equals_mha_over_concat(F_, N, M, E, H):
    ref = _mha(E, H, seed=1)
    mod = IntraFrameAttention(E, H, backend="torch").double()
    mod.load_state_dict(ref.state_dict())
    x = torch.randn(F_, N, E, dtype=torch.float64, requires_grad=True)
    msg = torch.randn(F_, M, E, dtype=torch.float64, requires_grad=True)
    out = mod(x, msg)
    cat = torch.cat([x, msg], dim=1)
    expect = _reference(ref, cat, cat)[:, :N]
    torch.testing.assert_close(out, expect, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    ga = torch.autograd.grad(out, (x, msg, mod.in_proj_weight), g)
    gb = torch.autograd.grad(expect, (x, msg, ref.in_proj_weight), g)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("bias", [False, True])
def test_prompt_cross_attention(bias):
    B, K, N, E, H = 3, 5, 11, 64, 2
    torch.manual_seed(2)
    mod = PromptCrossAttention(E, H, bias=bias, backend="torch").double()
    with torch.no_grad():
        for p in mod.parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert (mod.in_proj_bias is None) != bias
    q = torch.randn(K, E, dtype=torch.float64, requires_grad=True)
    kv = torch.randn(B, N, E, dtype=torch.float64)
    shared = mod(q, kv)
    expanded = mod(q.unsqueeze(0).expand(B, K, E), kv)
    torch.testing.assert_close(shared, expanded, rtol=1e-12, atol=1e-12)
    # nn.functional MHA with the same packed weights (out_proj always has a bias)
    ref = F.multi_head_attention_forward(
        q.unsqueeze(0).expand(B, K, E).transpose(0, 1), kv.transpose(0, 1), kv.transpose(0, 1), E, H,
        mod.in_proj_weight, mod.in_proj_bias, None, None, False, 0.0, mod.out_proj.weight, mod.out_proj.bias,
        need_weights=False)[0].transpose(0, 1)
    torch.testing.assert_close(shared, ref, rtol=1e-10, atol=1e-10)
    (g1,) = torch.autograd.grad(shared.sum(), q)
    (g2,) = torch.autograd.grad(ref.sum(), q)
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-10)


def test_ops_receive_views_of_the_packed_projection(monkeypatch):
    """No copies: q, k, v handed to the op share one storage (the packed projection output)."""
    seen = {}
    real = xk.intra_frame_attn

    def spy(q, k, v, k_msg, v_msg, **kw):
        seen["qkv"] = {t.untyped_storage().data_ptr() for t in (q, k, v)}
        seen["msg"] = {t.untyped_storage().data_ptr() for t in (k_msg, v_msg)}
        seen["contig"] = q.is_contiguous()
        return real(q, k, v, k_msg, v_msg, **kw)

    import xclip_kernels.nn as xnn

    monkeypatch.setattr(xnn, "intra_frame_attn", spy)
    mod = IntraFrameAttention(64, 2, backend="torch")
    mod(torch.randn(2, 9, 64), torch.randn(2, 1, 64))
    assert len(seen["qkv"]) == 1 and len(seen["msg"]) == 1 and not seen["contig"]


def test_backend_and_bad_input():
    mod = CrossFrameAttention(64, 2)
    assert mod.backend is None
    mod.set_backend("torch")
    assert mod.backend == "torch"
    with pytest.raises(ValueError, match="backend"):
        CrossFrameAttention(64, 2, backend="flash")
    with pytest.raises(ValueError, match="divisible"):
        CrossFrameAttention(64, 3)
    with pytest.raises(ValueError, match="embed_dim=64"):
        mod(torch.randn(2, 4, 32))
    with pytest.raises(ValueError, match=r"\[B, T, E\]"):
        mod(torch.randn(4, 64))
    with pytest.raises(ValueError, match="frames"):
        IntraFrameAttention(64, 2)(torch.randn(2, 5, 64), torch.randn(3, 1, 64))
    with pytest.raises(ValueError, match="batch"):
        PromptCrossAttention(64, 2)(torch.randn(2, 5, 64), torch.randn(3, 7, 64))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_other_backends_match_torch(backend):
    st = xk.available_backends()[backend]
    if not st.available:
        pytest.skip(f"{backend}: {st.reason}")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "cuda" and dev == "cpu":
        pytest.skip("CUDA backend needs a GPU")
    torch.manual_seed(3)
    x, msg, kv = torch.randn(4, 9, 64, device=dev), torch.randn(4, 1, 64, device=dev), torch.randn(2, 9, 64, device=dev)
    for mod, args in ((CrossFrameAttention(64, 2), (x,)), (IntraFrameAttention(64, 2), (x, msg)),
                      (PromptCrossAttention(64, 2), (x[0, :5], kv))):
        mod = mod.to(dev)
        mod.set_backend("torch")
        ref = mod(*args)
        mod.set_backend(backend)
        torch.testing.assert_close(mod(*args), ref, rtol=1e-4, atol=1e-4)
