"""The Triton kernels (xclip_kernels/triton/*.py) against a float64 oracle.

Runs on the CPU under ``TRITON_INTERPRET=1`` (tiny shapes, float32/float16),
or on a CUDA device when not interpreting. Each case calls the op module's
``forward`` / ``backward`` directly with every output buffer poisoned with NaN
(``_common.POISON``), so an unwritten element fails; inputs come contiguous,
as strided views of a packed projection, sequence-first, or as views into
NaN-filled buffers (an out-of-bounds read gives NaN). Tolerance rule of
CONVENTIONS.md: error <= 2x the eager same-dtype error + atol, NaN never passes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")

import xclip_kernels as xk  # noqa: E402
from xclip_kernels import reference as R  # noqa: E402
from xclip_kernels.backends import OpInputs  # noqa: E402
from op_cases import ARGS, ATOL, assert_close_rule, eager_out_and_grads, make_inputs  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if not INTERPRET and not torch.cuda.is_available():
    pytest.skip("Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
DEVICE = "cpu" if INTERPRET else "cuda"

from xclip_kernels.triton import _common as C  # noqa: E402
from xclip_kernels.triton import cross_frame_attn as CF  # noqa: E402
from xclip_kernels.triton import intra_frame_attn as IF  # noqa: E402
from xclip_kernels.triton import prompt_cross_attn as PC  # noqa: E402

MODULES = {"cross_frame_attn": CF, "intra_frame_attn": IF, "prompt_cross_attn": PC}

# (op, sizes, layout, nan_pad): odd sizes, partial packing groups, several key
# blocks (the interpreter tiles are 32 wide), M of 1 and 3, shared q.
CASES = [
    ("cross_frame_attn", dict(B=2, T=7, H=2, D=32), "contiguous", False),  # 4 sequences packed in one tile
    ("cross_frame_attn", dict(B=3, T=9, H=1, D=16), "seqfirst", True),  # partial group of packed sequences
    ("cross_frame_attn", dict(B=1, T=1, H=3, D=40), "packed", False),  # T = 1, odd head dim
    ("cross_frame_attn", dict(B=1, T=70, H=1, D=16), "contiguous", True),  # T > 64: unpacked flash path
    ("intra_frame_attn", dict(F=2, N=9, M=1, H=2, D=32), "packed", False),
    ("intra_frame_attn", dict(F=2, N=17, M=3, H=1, D=16), "seqfirst", True),
    ("intra_frame_attn", dict(F=1, N=40, M=3, H=2, D=24), "contiguous", True),  # two key blocks + messages
    ("intra_frame_attn", dict(F=3, N=1, M=1, H=1, D=16), "contiguous", False),
    ("prompt_cross_attn", dict(B=3, K=7, N=9, H=2, D=32, shared=True), "contiguous", True),
    ("prompt_cross_attn", dict(B=2, K=33, N=40, H=1, D=16, shared=True), "packed", False),
    ("prompt_cross_attn", dict(B=2, K=9, N=17, H=2, D=16), "seqfirst", True),
    ("prompt_cross_attn", dict(B=1, K=1, N=1, H=1, D=32), "contiguous", False),
]


def _case_id(c):
    op, dims, layout, nan = c
    sizes = "".join(f"{k}{int(v) if not isinstance(v, bool) else ''}" for k, v in dims.items())
    return f"{op.split('_')[0]}-{sizes}-{layout}{'-nanpad' if nan else ''}"


@pytest.fixture
def poison(monkeypatch):
    monkeypatch.setattr(C, "POISON", True)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_kernels_against_float64(case, dtype, poison):
    op, dims, layout, nan_pad = case
    mod = MODULES[op]
    tensors = make_inputs(op, dims, dtype, DEVICE, layout=layout, seed=CASES.index(case), nan_pad=nan_pad)
    if layout != "contiguous" and dims.get("T", dims.get("N", 2)) > 1:
        assert any(not t.is_contiguous() for t in tensors), "layout should give strided inputs"
    scale = dims["D"] ** -0.5
    t64 = [t.double() for t in tensors]

    out, lse = mod.forward(*tensors, scale)
    out64, lse64 = getattr(R, f"{op}_fwd")(*t64, scale)
    eager_out, eager_lse = getattr(R, f"{op}_fwd")(*tensors, scale)
    assert out.is_contiguous() and out.dtype == dtype and lse.dtype == torch.float32
    assert lse.is_contiguous() and lse.shape == lse64.shape
    assert_close_rule("out", out, out64, eager_out, ATOL[dtype])
    assert_close_rule("lse", lse, lse64, eager_lse, 1e-5)

    g = torch.Generator().manual_seed(1)
    do = torch.randn(out.shape, generator=g).to(dtype).to(DEVICE)
    grads = mod.backward(do, *tensors, out, lse, scale)
    grads64 = getattr(R, f"{op}_bwd")(do.double(), *t64, out64, lse64, scale)
    _, eager = eager_out_and_grads(op, tensors, do, scale)
    assert len(grads) == len(tensors)
    for name, t, gk, g64, ge in zip(ARGS[op], tensors, grads, grads64, eager):
        assert gk.shape == t.shape and gk.dtype == t.dtype, f"d{name}: {gk.shape}/{gk.dtype}"
        assert_close_rule(f"d{name}", gk, g64, ge, ATOL[dtype])


def test_poison_is_live(poison):
    t = C.empty((3, 4), torch.float32, DEVICE)
    assert torch.isnan(t).all()


@pytest.mark.parametrize("op", ["cross_frame_attn", "intra_frame_attn", "prompt_cross_attn"])
def test_public_op_autograd(op):
    """Through xk.<op>(backend='triton'): custom op, autograd and the kernels together (shared q)."""
    dims = dict(B=2, T=5, F=2, N=6, M=2, K=5, H=2, D=16, shared=True)
    xs = make_inputs(op, dims, torch.float32, DEVICE, seed=3, requires_grad=True)
    out = getattr(xk, op)(*xs, backend="triton")
    ref_xs = [x.detach().double().requires_grad_(True) for x in xs]
    ref = getattr(R, op)(*ref_xs)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).to(DEVICE)
    (out.double() * w).sum().backward()
    (ref * w).sum().backward()
    for name, x, rx in zip(ARGS[op], xs, ref_xs):
        assert x.grad is not None and x.grad.shape == x.shape, name
        torch.testing.assert_close(x.grad.double(), rx.grad, atol=1e-5, rtol=1e-5, msg=f"d{name}")
    if op == "prompt_cross_attn":
        assert xs[0].grad.shape == (5, 2, 16)  # shared q: gradient summed over videos, not expanded


def test_unsupported_head_dim_reason_and_error():
    inputs = OpInputs("cross_frame_attn", torch.device(DEVICE), torch.float32, 160, 2, 4, 4)
    reasons = CF.not_supported_reasons(inputs)
    assert reasons and "head_dim 160" in reasons[0]
    assert not CF.not_supported_reasons(OpInputs("cross_frame_attn", torch.device(DEVICE), torch.float32, 80, 2, 4, 4))
    q = torch.randn(1, 2, 1, 160, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim 160"):
        xk.cross_frame_attn(q, q, q, backend="triton")


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_kernels_compile_for_gpu_targets(arch):
    """Every kernel (first autotune config, bfloat16) compiles for Hopper / Ampere with Triton's ptxas, no GPU needed."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = Path(__file__).with_name("triton_compile_check.py")
    r = subprocess.run([sys.executable, str(script), str(arch)], env=env, capture_output=True, text=True, timeout=880)
    if r.returncode != 0 and "ptxas" in r.stdout + r.stderr and "not found" in r.stdout + r.stderr:
        pytest.skip("Triton's bundled ptxas is missing")
    assert r.returncode == 0, (r.stdout[-6000:] + r.stderr[-3000:])
    assert "compiled" in r.stdout and "failed 0" in r.stdout
