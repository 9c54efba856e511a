"""Correctness of the three ops on every backend that can run here.

Forward and every gradient against an independent float64 computation, with
the tolerance rule of CONVENTIONS.md (error <= 2x the eager same-dtype error +
atol). Backends are parametrised: ``torch`` always (CPU, and CUDA when
present), ``triton`` on CUDA or under TRITON_INTERPRET=1 (tiny cases only),
``cuda`` on a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

import xclip_kernels as xk
from op_cases import ARGS, ATOL, OPS, assert_close_rule, eager_same_dtype, make_inputs, oracle, run_op

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

# Odd sizes of CONVENTIONS.md; "big" cases are skipped under the Triton interpreter.
CASES = {
    "cross_frame_attn": [
        dict(B=1, T=1, H=1, D=32),
        dict(B=2, T=7, H=2, D=64),
        dict(B=3, T=8, H=2, D=32),
        dict(B=2, T=9, H=3, D=80),
        dict(B=1, T=17, H=2, D=96),
        dict(B=2, T=51, H=1, D=128, big=True),
    ],
    "intra_frame_attn": [
        dict(F=1, N=1, M=1, H=1, D=32),
        dict(F=2, N=7, M=1, H=2, D=64),
        dict(F=3, N=9, M=3, H=2, D=32),
        dict(F=2, N=17, M=8, H=1, D=80),
        dict(F=1, N=51, M=1, H=2, D=64, big=True),
        dict(F=2, N=197, M=1, H=2, D=64, big=True),
        dict(F=1, N=198, M=2, H=1, D=96, big=True),
    ],
    "prompt_cross_attn": [
        dict(B=1, K=1, N=1, H=1, D=32),
        dict(B=2, K=7, N=9, H=2, D=64, shared=True),
        dict(B=3, K=8, N=17, H=2, D=32),
        dict(B=2, K=9, N=8, H=1, D=80, shared=True),
        dict(B=2, K=51, N=197, H=1, D=64, shared=True, big=True),
        dict(B=1, K=17, N=198, H=2, D=96, big=True),
    ],
}
LAYOUTS = ("contiguous", "packed", "seqfirst")


def _backend_params():
    params = [pytest.param("torch", "cpu", id="torch-cpu")]
    if HAS_CUDA:
        params.append(pytest.param("torch", "cuda", id="torch-cuda"))
        params.append(pytest.param("triton", "cuda", id="triton-cuda"))
        params.append(pytest.param("cuda", "cuda", id="cuda-cuda"))
    elif INTERPRET:
        params.append(pytest.param("triton", "cpu", id="triton-interp"))
    return params


def _skip_unless_runnable(backend, device, dtype, case):
    st = xk.available_backends()[backend]
    if not st.available:
        pytest.skip(f"{backend} unavailable here: {st.reason}")
    if backend == "triton" and device == "cpu":
        if dtype not in (torch.float32, torch.float16):
            pytest.skip("the Triton interpreter runs float32/float16 only")
        if case.get("big"):
            pytest.skip("large case: too slow under the Triton interpreter")
    if dtype == torch.float64 and backend != "torch":
        pytest.skip("float64 is a torch-backend dtype")
    if dtype == torch.bfloat16 and device == "cpu" and backend != "torch":
        pytest.skip("bfloat16 kernels need a GPU")
    if backend == "cuda" and case["D"] not in (32, 64, 80, 96, 128):
        pytest.skip("head dim outside the cuda backend's list")


def _cases():
    for op in OPS:
        for i, case in enumerate(CASES[op]):
            yield pytest.param(op, case, LAYOUTS[i % len(LAYOUTS)], id=f"{op}-{i}-{LAYOUTS[i % len(LAYOUTS)]}")


DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


def _check_forward_backward(op, case, layout, dtype, backend, device, nan_pad=False, seed=0):
    tensors = make_inputs(op, case, dtype, device, layout, seed=seed, nan_pad=nan_pad, requires_grad=True)
    out = run_op(op, tensors, backend=backend)
    assert out.dtype == dtype and out.device.type == device

    # float64 truth and the eager same-dtype yardstick, with their gradients
    t64 = [t.detach().double().cpu().requires_grad_(True) for t in tensors]
    ref64 = eager_same_dtype(op, t64)
    assert torch.allclose(ref64, oracle(op, t64), atol=1e-12), "the two float64 oracles disagree"
    teager = [t.detach().clone().requires_grad_(True) for t in tensors]
    eager = eager_same_dtype(op, teager)
    assert_close_rule(f"{op} out", out.cpu(), ref64, eager.cpu(), ATOL[dtype])

    g = torch.Generator().manual_seed(seed + 1)
    do = torch.randn(out.shape, generator=g).to(dtype).to(device)
    grads = torch.autograd.grad(out, tensors, do)
    grads64 = torch.autograd.grad(ref64, t64, do.double().cpu())
    grads_eager = torch.autograd.grad(eager, teager, do)
    for name, gk, g64, ge in zip(ARGS[op], grads, grads64, grads_eager):
        assert gk.shape == g64.shape and gk.dtype == dtype
        assert_close_rule(f"{op} d{name}", gk.cpu(), g64, ge.cpu(), ATOL[dtype] * 4)


@pytest.mark.parametrize("backend,device", _backend_params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op,case,layout", list(_cases()))
def test_forward_backward_vs_float64(op, case, layout, dtype, backend, device):
    _skip_unless_runnable(backend, device, dtype, case)
    _check_forward_backward(op, case, layout, dtype, backend, device)


@pytest.mark.parametrize("backend,device", _backend_params())
@pytest.mark.parametrize("op", OPS)
def test_nan_padded_inputs(op, backend, device):
    """Inputs are windows into NaN-filled buffers: any out-of-bounds read shows up as NaN."""
    case = CASES[op][2]
    _skip_unless_runnable(backend, device, torch.float32, case)
    for layout in ("contiguous", "seqfirst"):
        _check_forward_backward(op, case, layout, torch.float32, backend, device, nan_pad=True, seed=3)


@pytest.mark.parametrize("M", [1, 3])
@pytest.mark.parametrize("backend,device", _backend_params())
def test_intra_message_counts(M, backend, device):
    case = dict(F=2, N=9, M=M, H=2, D=32)
    _skip_unless_runnable(backend, device, torch.float32, case)
    _check_forward_backward("intra_frame_attn", case, "packed", torch.float32, backend, device, seed=M)


def test_float64_torch_backend():
    for op in OPS:
        case = CASES[op][2]
        _check_forward_backward(op, case, "seqfirst", torch.float64, "torch", "cpu")


@pytest.mark.parametrize("op", OPS)
def test_gradcheck_float64(op):
    case = {"cross_frame_attn": dict(B=2, T=3, H=2, D=4), "intra_frame_attn": dict(F=2, N=3, M=2, H=2, D=4),
            "prompt_cross_attn": dict(B=2, K=3, N=4, H=2, D=4, shared=True)}[op]
    tensors = make_inputs(op, case, torch.float64, "cpu", "seqfirst", seed=7, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *t: run_op(op, t, backend="torch", scale=0.7), tensors)
    if op == "prompt_cross_attn":  # and the per-video query form
        case = dict(case, shared=False)
        tensors = make_inputs(op, case, torch.float64, "cpu", "packed", seed=8, requires_grad=True)
        assert torch.autograd.gradcheck(lambda *t: run_op(op, t, backend="torch"), tensors)


def test_shared_query_equals_expanded():
    """A shared [K, H, D] query gives the expanded result, and its gradient is the sum over videos."""
    case = dict(B=3, K=5, N=7, H=2, D=16, shared=True)
    q, k, v = make_inputs("prompt_cross_attn", case, torch.float64, "cpu", seed=11, requires_grad=True)
    qe = q.detach().unsqueeze(0).expand(3, -1, -1, -1).clone().requires_grad_(True)
    o1 = xk.prompt_cross_attn(q, k, v, backend="torch")
    o2 = xk.prompt_cross_attn(qe, k, v, backend="torch")
    torch.testing.assert_close(o1, o2)
    o1.square().sum().backward()
    o2.square().sum().backward()
    torch.testing.assert_close(q.grad, qe.grad.sum(0))


def test_empty_batch_gives_empty_output():
    q = torch.randn(0, 8, 2, 16, requires_grad=True)
    out = xk.cross_frame_attn(q, q, q)
    assert out.shape == (0, 8, 2, 16)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_large_batch_heads_torch():
    """B*H above 65,535 (the limit of CUDA grid axes 1 and 2) on the reference path."""
    q = torch.randn(16400, 2, 4, 8)
    out = xk.cross_frame_attn(q, q, q, backend="torch")
    ref = torch.softmax(torch.einsum("bthd,bshd->bhts", q, q) * 8**-0.5, -1)
    torch.testing.assert_close(out, torch.einsum("bhts,bshd->bthd", ref, q), atol=1e-5, rtol=1e-5)


def test_custom_scale_is_used():
    q, k, v = make_inputs("cross_frame_attn", dict(B=2, T=5, H=2, D=8), torch.float64, "cpu", seed=2)
    out = xk.cross_frame_attn(q, k, v, scale=0.123)
    torch.testing.assert_close(out, oracle("cross_frame_attn", [q, k, v], scale=0.123))
    assert not torch.allclose(out, xk.cross_frame_attn(q, k, v))


# --- the torch backend's CPU path (PyTorch's CPU flash-attention kernels) ---------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["contiguous", "packed", "seqfirst", "lastdim-strided"])
def test_torch_cpu_flash_path_equals_eager_definition_float64(op, layout):
    """reference.cpu_* (the torch backend on the CPU) against the explicit float64 definitions."""
    from xclip_kernels import reference as R

    case = {"cross_frame_attn": dict(B=2, T=9, H=3, D=80), "intra_frame_attn": dict(F=3, N=17, M=3, H=2, D=64),
            "prompt_cross_attn": dict(B=3, K=7, N=19, H=2, D=32, shared=True)}[op]
    if layout == "lastdim-strided":  # a head dim that is not the innermost stride
        tensors = [t.transpose(-1, -2).contiguous().transpose(-1, -2)
                   for t in make_inputs(op, case, torch.float64, "cpu", "contiguous", seed=21)]
        assert tensors[0].stride(-1) != 1
    else:
        tensors = make_inputs(op, case, torch.float64, "cpu", layout, seed=21)
    out, lse = getattr(R, f"cpu_{op}_fwd")(*tensors, 0.37)
    out0, lse0 = getattr(R, f"{op}_fwd")(*tensors, 0.37)
    assert out.is_contiguous() and out.dtype == torch.float64 and lse.dtype == torch.float64
    torch.testing.assert_close(out, out0, rtol=0, atol=1e-12)
    torch.testing.assert_close(lse, lse0, rtol=0, atol=1e-12)
    do = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
    for do_ in (do, torch.ones(()).double().expand(out.shape)):  # also a stride-0 gradient (from .sum())
        grads = getattr(R, f"cpu_{op}_bwd")(do_, *tensors, out, lse, 0.37)
        grads0 = getattr(R, f"{op}_bwd")(do_, *tensors, out0, lse0, 0.37)
        for g, g0, t in zip(grads, grads0, tensors):
            assert g.shape == t.shape
            torch.testing.assert_close(g, g0, rtol=0, atol=1e-12)


def test_torch_backend_uses_the_cpu_flash_kernel():
    q, k, v = make_inputs("cross_frame_attn", dict(B=2, T=5, H=2, D=8), torch.float32, "cpu", seed=1)
    with torch.profiler.profile() as prof:
        xk.cross_frame_attn(q, k, v, backend="torch")
    names = {e.name for e in prof.events()}
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in names and "aten::bmm" not in names


@pytest.mark.parametrize("backend,device", _backend_params())
@pytest.mark.parametrize("op", ["cross_frame_attn_packed", "intra_frame_attn_packed", "prompt_cross_attn_packed"])
def test_packed_variants_vs_float64(op, backend, device):
    """The packed ops against the float64 oracle: output and the one packed gradient per argument."""
    base = op.replace("_packed", "")
    case = {"cross_frame_attn": dict(B=2, T=7, H=2, D=32), "intra_frame_attn": dict(F=2, N=9, M=2, H=2, D=32),
            "prompt_cross_attn": dict(B=2, K=5, N=9, H=2, D=32, shared=True)}[base]
    _skip_unless_runnable(backend, device, torch.float32, case)
    g = torch.Generator().manual_seed(9)
    H, D = case["H"], case["D"]
    if base == "cross_frame_attn":
        packed = [torch.randn(case["B"], case["T"], 3, H, D, generator=g)]
    elif base == "intra_frame_attn":
        packed = [torch.randn(case["F"], case["N"], 3, H, D, generator=g),
                  torch.randn(case["F"], case["M"], 2, H, D, generator=g)]
    else:
        packed = [torch.randn(case["K"], H, D, generator=g), torch.randn(case["B"], case["N"], 2, H, D, generator=g)]
    packed = [t.to(device).requires_grad_(True) for t in packed]
    out = getattr(xk, op)(*packed, backend=backend)
    p64 = [t.detach().double().cpu().requires_grad_(True) for t in packed]
    split = [u for t in p64 for u in (t.unbind(2) if t.dim() == 5 else (t,))]
    ref64 = oracle(base, split)
    teager = [t.detach().clone().requires_grad_(True) for t in packed]
    split_e = [u for t in teager for u in (t.unbind(2) if t.dim() == 5 else (t,))]
    eager = eager_same_dtype(base, split_e)
    assert_close_rule(f"{op} out", out.cpu(), ref64, eager.cpu(), ATOL[torch.float32])
    do = torch.randn(out.shape, generator=g).to(device)
    ref64 = eager_same_dtype(base, split)  # differentiable float64 truth (checked against the oracle above)
    for gk, g64, ge in zip(torch.autograd.grad(out, packed, do), torch.autograd.grad(ref64, p64, do.double().cpu()),
                           torch.autograd.grad(eager, teager, do)):
        assert gk.shape == g64.shape and gk.is_contiguous()
        assert_close_rule(f"{op} grad", gk.cpu(), g64, ge.cpu(), ATOL[torch.float32] * 4)
