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
