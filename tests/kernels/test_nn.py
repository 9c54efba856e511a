"""xclip_kernels.nn: drop-in modules with nn.MultiheadAttention's parameter layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

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


def test_ops_receive_the_packed_projection(monkeypatch):
    """No copies forward: the packed ops get the projection itself ([..., 3, H, D], a view of one matmul)."""
    import xclip_kernels.nn as xnn

    seen = {}
    real_intra, real_cross = xnn.intra_frame_attn_packed, xnn.cross_frame_attn_packed

    def spy_intra(qkv, kv_msg, **kw):
        seen["intra"] = (tuple(qkv.shape), tuple(kv_msg.shape), qkv._base is not None, kv_msg._base is not None)
        return real_intra(qkv, kv_msg, **kw)

    def spy_cross(qkv, **kw):
        seen["cross"] = (tuple(qkv.shape), qkv._base is not None)
        return real_cross(qkv, **kw)

    monkeypatch.setattr(xnn, "intra_frame_attn_packed", spy_intra)
    monkeypatch.setattr(xnn, "cross_frame_attn_packed", spy_cross)
    IntraFrameAttention(64, 2, backend="torch")(torch.randn(2, 9, 64), torch.randn(2, 1, 64))
    CrossFrameAttention(64, 2, backend="torch")(torch.randn(3, 8, 64))
    assert seen["intra"] == ((2, 9, 3, 2, 32), (2, 1, 2, 2, 32), True, True)
    assert seen["cross"] == ((3, 8, 3, 2, 32), True)


class _Creations(TorchDispatchMode):
    """Records (op, numel) of every tensor an aten/custom op returns (views excluded)."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rets = func._schema.returns
        if not (rets and rets[0].alias_info is not None):  # views and in-place results create nothing
            for t in pytree.tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.made.append((str(func), t.numel()))
        return out


def _packed_grad_creations(module, inputs, op_path: bool):
    """Ops that create a tensor the size of the packed qkv gradient during ``module``'s backward."""
    x = inputs[0]
    packed = x.shape[0] * x.shape[1] * 3 * module.embed_dim
    if op_path:  # a dispatch mode during the forward: the custom-op path (torch.ops.xclip.*)
        with _Creations():
            out = module(*inputs)
    else:  # plain eager: the autograd.Function fast path
        out = module(*inputs)
    g = torch.randn_like(out)
    with _Creations() as rec:
        out.backward(g)
    return [op for op, n in rec.made if n == packed]


@pytest.mark.parametrize("op_path", [False, True], ids=["eager", "custom-op"])
@pytest.mark.parametrize("which", ["cross", "intra"])
def test_backward_writes_one_packed_gradient(which, op_path):
    """#12: the backward creates one tensor the size of the packed qkv gradient (the one the op
    writes), no stack/cat of dq, dk, dv. Sizes chosen so no other tensor has that many elements."""
    torch.manual_seed(4)
    if which == "cross":
        mod, inputs = CrossFrameAttention(64, 2, backend="torch"), (torch.randn(3, 7, 64, requires_grad=True),)
    else:
        mod = IntraFrameAttention(64, 2, backend="torch")
        inputs = (torch.randn(3, 7, 64, requires_grad=True), torch.randn(3, 1, 64, requires_grad=True))
    made = _packed_grad_creations(mod, inputs, op_path)
    assert len(made) == 1, made
    assert "stack" not in made[0] and "cat" not in made[0], made


def test_packed_gradient_detector_flags_the_unbind_path():
    """The check above can fail: unbinding the projection and calling the plain op stacks dq/dk/dv."""

    class Unbound(CrossFrameAttention):
        def forward(self, x):
            q, k, v = self._project(x, 0, 3).unbind(-3)
            return self._out(xk.cross_frame_attn(q, k, v, backend=self.backend))

    mod = Unbound(64, 2, backend="torch")
    made = _packed_grad_creations(mod, (torch.randn(3, 7, 64, requires_grad=True),), op_path=False)
    assert any("stack" in op for op in made), made


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
