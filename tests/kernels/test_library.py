"""torch.library integration: opcheck, torch.compile(fullgraph=True), FLOP counting."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import xclip_kernels as xk
from op_cases import make_inputs

CASES = {
    "cross_frame_attn": dict(B=2, T=5, H=2, D=8),
    "intra_frame_attn": dict(F=3, N=7, M=2, H=2, D=8),
    "prompt_cross_attn": dict(B=2, K=4, N=6, H=2, D=8, shared=True),
}


@pytest.mark.parametrize("op", list(CASES))
@pytest.mark.parametrize("layout", ["contiguous", "seqfirst"])
def test_opcheck(op, layout):
    tensors = make_inputs(op, CASES[op], torch.float32, "cpu", layout, seed=1, requires_grad=True)
    fwd = getattr(torch.ops.xclip, f"{op}_fwd")
    bwd = getattr(torch.ops.xclip, f"{op}_bwd")
    torch.library.opcheck(fwd, (*tensors, 0.3, "torch"))
    out, lse = fwd(*tensors, 0.3, "torch")
    do = torch.randn_like(out)
    torch.library.opcheck(bwd, (do, *[t.detach() for t in tensors], out.detach(), lse, 0.3, "torch"))
    torch.library.opcheck(getattr(torch.ops.xclip, op), tuple(tensors), {"scale": 0.3, "backend": "torch"})


PACKED = {
    "cross_frame_attn_packed": lambda g: (torch.randn(2, 5, 3, 2, 8, generator=g),),
    "intra_frame_attn_packed": lambda g: (torch.randn(3, 7, 3, 2, 8, generator=g), torch.randn(3, 2, 2, 2, 8, generator=g)),
    "prompt_cross_attn_packed": lambda g: (torch.randn(4, 2, 8, generator=g), torch.randn(2, 6, 2, 2, 8, generator=g)),
}


@pytest.mark.parametrize("op", list(PACKED))
def test_opcheck_packed(op):
    g = torch.Generator().manual_seed(3)
    tensors = [t.requires_grad_(True) for t in PACKED[op](g)]
    fwd = getattr(torch.ops.xclip, f"{op}_fwd")
    bwd = getattr(torch.ops.xclip, f"{op}_bwd")
    torch.library.opcheck(fwd, (*tensors, 0.3, "torch"))
    out, lse = fwd(*tensors, 0.3, "torch")
    do = torch.randn_like(out)
    torch.library.opcheck(bwd, (do, *[t.detach() for t in tensors], out.detach(), lse, 0.3, "torch"))
    torch.library.opcheck(getattr(torch.ops.xclip, op), tuple(tensors), {"scale": 0.3, "backend": "torch"})


def test_packed_variants_equal_the_plain_ops():
    g = torch.Generator().manual_seed(4)
    for op, make in PACKED.items():
        packed = [t.double().requires_grad_(True) for t in make(g)]
        plain = [t.detach().clone().requires_grad_(True) for t in packed]
        split = [u for t in plain for u in (t.unbind(2) if t.dim() == 5 else (t,))]
        a = getattr(xk, op)(*packed, scale=0.4)
        b = getattr(xk, op.replace("_packed", ""))(*split, scale=0.4)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        do = torch.randn_like(a)
        for x, y in zip(torch.autograd.grad(a, packed, do), torch.autograd.grad(b, plain, do)):
            assert x.shape == y.shape and x.is_contiguous()
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def _assert_compiled_matches_eager(fn, args) -> None:
    """``fn(*args)`` (a scalar) and its gradients: torch.compile(fullgraph=True) equals eager."""
    a1 = [t.clone().requires_grad_(True) for t in args]
    a2 = [t.clone().requires_grad_(True) for t in args]
    eager = fn(*a1)
    eager.backward()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")(*a2)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    for x, y in zip(a1, a2):
        torch.testing.assert_close(y.grad, x.grad)


def _all_three(x, y, msg, text):
    B, T, H, D = x.shape
    a = xk.cross_frame_attn(x, x, x)
    b = xk.intra_frame_attn(y, y, y, msg, msg)
    c = xk.prompt_cross_attn(text, y, y)
    return a.sum() + b.square().mean() + c.tanh().sum()


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    args = [
        torch.randn(2, 4, 2, 8, generator=g),
        torch.randn(2, 9, 2, 8, generator=g),
        torch.randn(2, 1, 2, 8, generator=g),
        torch.randn(5, 2, 8, generator=g),
    ]
    _assert_compiled_matches_eager(_all_three, args)


def _packed_three(qkv, fqkv, kvm, text, kv):
    return (xk.cross_frame_attn_packed(qkv).sum() + xk.intra_frame_attn_packed(fqkv, kvm).square().mean()
            + xk.prompt_cross_attn_packed(text, kv).tanh().sum())


def test_compile_fullgraph_packed_matches_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 4, 3, 2, 8, generator=g), torch.randn(2, 9, 3, 2, 8, generator=g),
            torch.randn(2, 1, 2, 2, 8, generator=g), torch.randn(5, 2, 8, generator=g),
            torch.randn(2, 9, 2, 2, 8, generator=g)]
    _assert_compiled_matches_eager(_packed_three, args)


def test_compile_inductor_fullgraph():
    """The default (inductor) backend too: the custom ops stay opaque calls in the graph."""
    torch._dynamo.reset()
    x = torch.randn(2, 4, 2, 8)
    y = torch.randn(2, 9, 2, 8)
    m = torch.randn(2, 1, 2, 8)
    t = torch.randn(5, 2, 8)
    out = torch.compile(_all_three, fullgraph=True)(x, y, m, t)
    torch.testing.assert_close(out, _all_three(x, y, m, t), rtol=1e-5, atol=1e-5)


def _matmul_flops(op, c):
    if op == "cross_frame_attn":
        return 2 * c["B"] * c["H"] * c["T"] * c["T"] * c["D"]
    if op == "intra_frame_attn":
        return 2 * c["F"] * c["H"] * c["N"] * (c["N"] + c["M"]) * c["D"]
    return 2 * c["B"] * c["H"] * c["K"] * c["N"] * c["D"]


@pytest.mark.parametrize("op", list(CASES))
def test_flop_counter(op):
    c = CASES[op]
    tensors = make_inputs(op, c, torch.float32, "cpu", seed=2, requires_grad=True)
    with FlopCounterMode(display=False) as fc:
        out = getattr(xk, op)(*tensors)
    assert fc.get_total_flops() == 2 * _matmul_flops(op, c)  # q@k^T and p@v
    with FlopCounterMode(display=False) as fc:
        out.sum().backward()
    assert fc.get_total_flops() == 5 * _matmul_flops(op, c)  # as torch counts SDPA's backward


def test_meta_tensors_trace_shapes():
    q = torch.empty(3, 6, 2, 8, device="meta")
    m = torch.empty(3, 2, 2, 8, device="meta")
    assert xk.intra_frame_attn(q, q, q, m, m).shape == (3, 6, 2, 8)
    assert xk.prompt_cross_attn(torch.empty(4, 2, 8, device="meta"), q, q).shape == (3, 4, 2, 8)
