"""Backend discovery, selection, the environment override and the reasons a backend gives."""

from __future__ import annotations

import pytest
import torch

import xclip_kernels as xk
from xclip_kernels.backends import BACKENDS, OpInputs, select_backend


def test_available_backends_reports_every_backend_with_a_reason():
    st = xk.available_backends()
    assert set(st) == {"torch", "triton", "cuda"}
    assert st["torch"].available
    for name, s in st.items():
        assert s.name == name and isinstance(s.reason, str) and s.reason
        assert bool(s) == s.available
    if not torch.cuda.is_available():
        assert not st["cuda"].available
        assert "CUDA" in st["cuda"].reason or "cuda" in st["cuda"].reason


def _inputs(device="cpu", dtype=torch.float32, D=64):
    return OpInputs("cross_frame_attn", torch.device(device), dtype, D, 8, 8, 8)


def test_auto_picks_torch_for_cpu_tensors(monkeypatch):
    monkeypatch.delenv("XCLIP_KERNELS_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert select_backend(_inputs(), None) == "torch"
    assert select_backend(_inputs(), "auto") == "torch"


def test_env_var_overrides_default(monkeypatch):
    q = torch.randn(2, 4, 2, 16)
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "torch")
    assert select_backend(_inputs(), None) == "torch"
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run"):
        xk.cross_frame_attn(q, q, q)
    # an explicit argument wins over the environment
    assert xk.cross_frame_attn(q, q, q, backend="torch").shape == q.shape
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "nonsense")
    with pytest.raises(ValueError, match=r"environment variable XCLIP_KERNELS_BACKEND: unknown backend 'nonsense'"):
        xk.cross_frame_attn(q, q, q)


def test_forced_backend_error_lists_reasons():
    q = torch.randn(2, 4, 2, 16)
    with pytest.raises(ValueError) as e:
        xk.cross_frame_attn(q, q, q, backend="cuda")
    msg = str(e.value)
    assert "cuda:" in msg and "device cpu not supported" in msg


def test_reasons_are_per_backend():
    r = BACKENDS["cuda"].not_supported_reasons(_inputs(dtype=torch.float64, D=33))
    assert any("float64" in x for x in r) and any("head_dim 33" in x for x in r)
    assert BACKENDS["torch"].not_supported_reasons(_inputs(dtype=torch.float64, D=33)) == []


def test_build_info_is_recorded():
    info = xk.build_info()
    assert "torch_version" in info and "extension_error" in info


def test_auto_never_picks_the_triton_interpreter(monkeypatch):
    """Under TRITON_INTERPRET=1 Triton can run CPU tensors, but only on request."""
    monkeypatch.delenv("XCLIP_KERNELS_BACKEND", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert select_backend(_inputs(), None) == "torch"
    if xk.available_backends()["triton"].available:
        assert select_backend(_inputs(), "triton") == "triton"


def test_dispatch_cache_keys_on_the_environment(monkeypatch):
    """The choice is cached per key, and XCLIP_KERNELS_BACKEND is part of the key: a change takes effect."""
    from xclip_kernels import backends as B

    q = torch.randn(2, 4, 2, 16)
    monkeypatch.delenv("XCLIP_KERNELS_BACKEND", raising=False)
    B.clear_dispatch_cache()
    xk.cross_frame_attn(q, q, q)
    xk.cross_frame_attn(q, q, q)
    assert len(B._CACHE) == 1 and list(B._CACHE.values()) == ["torch"]
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run"):
        xk.cross_frame_attn(q, q, q)
    assert len(B._CACHE) == 1  # failures are not cached
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "torch")
    xk.cross_frame_attn(q, q, q)
    assert len(B._CACHE) == 2
    # the same size class shares an entry; another head dim or dtype does not
    q6 = torch.randn(2, 6, 2, 16)  # T = 6: the size class of T = 4 (4..7)
    xk.cross_frame_attn(q6, q6, q6)
    assert len(B._CACHE) == 2
    q2 = torch.randn(2, 4, 2, 8)
    xk.cross_frame_attn(q2, q2, q2)
    xk.cross_frame_attn(q.double(), q.double(), q.double())
    assert len(B._CACHE) == 4
    B.clear_dispatch_cache()
    assert not B._CACHE


def test_empty_backend_string_follows_the_environment_too(monkeypatch):
    q = torch.randn(2, 4, 2, 16)
    monkeypatch.delenv("XCLIP_KERNELS_BACKEND", raising=False)
    xk.cross_frame_attn(q, q, q, backend="")  # cached with the environment unset
    monkeypatch.setenv("XCLIP_KERNELS_BACKEND", "cuda")
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run"):
        xk.cross_frame_attn(q, q, q, backend="")


def test_cached_choice_follows_a_backend_that_stops_being_available(monkeypatch):
    from xclip_kernels import backends as B

    q = torch.randn(2, 4, 2, 16)
    B.clear_dispatch_cache()
    assert B.resolve_backend("cross_frame_attn", q.device, q.dtype, (16, 4, 4, 4, 0), "torch") == "torch"
    monkeypatch.setattr(B.TorchBackend, "status", lambda self: B.BackendStatus("torch", False, "switched off"))
    # cached: the decision is not re-made on every call
    assert B.resolve_backend("cross_frame_attn", q.device, q.dtype, (16, 4, 4, 4, 0), "torch") == "torch"
    B.clear_dispatch_cache()
    with pytest.raises(ValueError, match="switched off"):
        B.resolve_backend("cross_frame_attn", q.device, q.dtype, (16, 4, 4, 4, 0), "torch")
    B.clear_dispatch_cache()


def test_eager_path_and_custom_op_path_agree():
    """The plain-eager fast path and torch.ops.xclip.* (what compile/opcheck/modes see) give the same numbers."""
    from op_cases import make_inputs

    for op, case in (("cross_frame_attn", dict(B=2, T=5, H=2, D=8)),
                     ("intra_frame_attn", dict(F=2, N=7, M=2, H=2, D=8)),
                     ("prompt_cross_attn", dict(B=2, K=4, N=6, H=2, D=8, shared=True))):
        a = make_inputs(op, case, torch.float64, "cpu", "seqfirst", seed=5, requires_grad=True)
        b = [t.detach().clone().requires_grad_(True) for t in a]
        fast = getattr(xk, op)(*a, backend="torch")
        slow = getattr(torch.ops.xclip, op)(*b, backend="torch")
        assert fast.grad_fn is not None and "EagerAttention" in type(fast.grad_fn).__name__
        assert "EagerAttention" not in type(slow.grad_fn).__name__
        torch.testing.assert_close(fast, slow, rtol=0, atol=0)
        g = torch.randn_like(fast)
        for x, y in zip(torch.autograd.grad(fast, a, g), torch.autograd.grad(slow, b, g)):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_backward_writes_into_given_views():
    """The grads= contract of every backend's backward: preallocated strided views are written and returned."""
    from xclip_kernels import reference as R

    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 6, 2, 8).unbind(0)
    out, lse = R.cross_frame_attn_fwd(q, k, v, 0.3)
    do = torch.randn_like(out)
    want = R.cross_frame_attn_bwd(do, q, k, v, out, lse, 0.3)
    names = ["torch"] + (["triton"] if xk.available_backends()["triton"].available else [])
    for name in names:
        packed = torch.full((2, 6, 3, 2, 8), float("nan"))
        views = packed.unbind(2)
        got = BACKENDS[name].backward("cross_frame_attn", do, (q, k, v), out, lse, 0.3, grads=views)
        assert all(g is w for g, w in zip(got, views)), name
        for g, w in zip(views, want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
