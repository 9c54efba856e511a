"""The CUDA C++ backend (csrc/*.cu): the compiled extension, its op schemas and
kernel registrations, how the backend reports itself without a GPU, the
tensor-core instructions in the built binary, and (marked ``gpu``) the kernels'
numbers against a float64 reference, on odd sizes, strided and NaN-padded
inputs, B*H above 65,535, agreement with the Triton backend and the C++-side
argument checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import xclip_kernels as xk
from xclip_kernels import _extension, reference

HAS_CUDA = torch.cuda.is_available()
# Decided by what setup.py recorded at build time, not by the test-time environment.
BUILD_SKIP_REASON = (
    "no build metadata (package not installed with pip)"
    if not _extension.build_info
    else _extension.build_info.get("skip_reason")
)
needs_ext = pytest.mark.skipif(_extension.error is not None, reason=f"extension unusable: {_extension.error}")
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]

OPS = ("cross_frame_attn", "intra_frame_attn", "prompt_cross_attn")
ARG_NAMES = {
    "cross_frame_attn": ["q", "k", "v"],
    "intra_frame_attn": ["q", "k", "v", "k_msg", "v_msg"],
    "prompt_cross_attn": ["q", "k", "v"],
}


# --------------------------------------------------------------------------------------------
# CPU: build, registration, dispatch without a GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(BUILD_SKIP_REASON is not None, reason=f"the build skipped the extension: {BUILD_SKIP_REASON}")
def test_extension_imports():
    assert _extension.error is None, _extension.error
    from xclip_kernels import _C

    assert _C.__file__.endswith(".so")


@needs_ext
@pytest.mark.parametrize("op", OPS)
def test_schemas(op):
    fwd = getattr(torch.ops.xclip, f"{op}_fwd_cuda").default._schema
    bwd = getattr(torch.ops.xclip, f"{op}_bwd_cuda").default._schema
    names = ARG_NAMES[op]
    assert [a.name for a in fwd.arguments] == names + ["scale"]
    assert len(fwd.returns) == 2
    assert [a.name for a in bwd.arguments] == ["grad_out", *names, "out", "lse", "scale"]
    assert len(bwd.returns) == len(names)


@needs_ext
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", ["fwd", "bwd"])
def test_cuda_kernels_registered(op, kind):
    name = f"xclip::{op}_{kind}_cuda"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA"), f"no CUDA kernel for {name}"
    # and nothing for the CPU: a CPU tensor must go through the Python dispatch's ValueError instead
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU")


@pytest.mark.skipif(HAS_CUDA, reason="checks the GPU-less report")
def test_backend_unavailable_with_reason_without_gpu():
    st = xk.available_backends()["cuda"]
    assert not st.available
    if _extension.error is None:
        assert st.reason == "extension built, but no CUDA device is visible"
    else:
        assert st.reason == _extension.error
    assert "unavailable" in str(st) and st.reason in str(st)


def _cpu_inputs(op, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    if op == "intra_frame_attn":
        return [r(2, 5, 2, 32), r(2, 5, 2, 32), r(2, 5, 2, 32), r(2, 1, 2, 32), r(2, 1, 2, 32)]
    if op == "prompt_cross_attn":
        return [r(3, 2, 32), r(2, 5, 2, 32), r(2, 5, 2, 32)]
    return [r(2, 4, 2, 32) for _ in range(3)]


@pytest.mark.skipif(HAS_CUDA, reason="checks the GPU-less report")
@pytest.mark.parametrize("op", OPS)
def test_forced_cuda_on_cpu_raises_with_reason(op):
    tensors = _cpu_inputs(op)
    reason = xk.available_backends()["cuda"].reason
    with pytest.raises(ValueError) as ei:
        getattr(xk, op)(*tensors, backend="cuda")
    msg = str(ei.value)
    assert op in msg and "backend 'cuda'" in msg and reason in msg, msg
    # auto still works here (torch backend), so the error is specific to the forced backend
    out = getattr(xk, op)(*tensors)
    assert out.shape[-3:] == tensors[0].shape[-3:]


def _cuobjdump() -> str | None:
    cands = [shutil.which("cuobjdump")]
    cuda_home = xk.build_info().get("cuda_home")
    if cuda_home:
        cands.append(str(Path(cuda_home) / "bin" / "cuobjdump"))
    try:  # triton ships one
        import triton

        cands.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


@needs_ext
@pytest.mark.skipif(_cuobjdump() is None, reason="no cuobjdump found")
def test_16bit_kernels_use_tensor_cores():
    """The float16 / bfloat16 kernels contain HMMA (tensor-core) instructions for
    every architecture built (sm_80, sm_90 by default); float32 uses FMA."""
    from xclip_kernels import _C

    r = subprocess.run([_cuobjdump(), "-sass", _C.__file__], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hmma: dict[tuple[str, str], int] = {}
    arch, func = None, None
    for line in r.stdout.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.search(r"Function : (\S+)", line)
        if m:
            func = m.group(1)
            hmma.setdefault((arch, func), 0)
        elif func and "HMMA" in line:
            hmma[(arch, func)] += 1
    kernels = {k: n for k, n in hmma.items() if "attn_" in k[1] and "_kernel" in k[1]}
    archs = {a for a, _ in kernels}
    assert archs, "no attention kernels in the binary"
    if not HAS_CUDA:  # the default GPU-less build: Ampere and Hopper
        assert {"sm_80", "sm_90"} <= archs, archs
    for a in archs:
        for kind in ("fwd", "bwd"):
            for tname in ("6__half", "13__nv_bfloat16"):
                found = [n for (aa, f), n in kernels.items() if aa == a and f"attn_{kind}_kernelI{tname}" in f]
                assert found and all(n > 0 for n in found), f"{a} {kind} {tname}: no HMMA ({found})"


# --------------------------------------------------------------------------------------------
# GPU: numbers
# --------------------------------------------------------------------------------------------

ATOL = {torch.float32: 5e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def make(op, dims, dtype, layout="contiguous", nan_pad=False, seed=0, device="cuda"):
    """Seeded inputs of ``op``. layout: contiguous, packed (unbound views of one
    [.., 3, H, D] projection), seqfirst ([L, B, H, D] transposed). nan_pad: each
    tensor a view into a NaN-filled buffer with extra rows and head-dim columns."""
    g = torch.Generator().manual_seed(seed)
    H, D = dims["H"], dims["D"]
    if op == "cross_frame_attn":
        shapes = [(dims["B"], dims["T"], H, D)] * 3
    elif op == "intra_frame_attn":
        s, m = (dims["F"], dims["N"], H, D), (dims["F"], dims["M"], H, D)
        shapes = [s, s, s, m, m]
    else:
        q = (dims["K"], H, D) if dims.get("shared") else (dims["B"], dims["K"], H, D)
        shapes = [q, (dims["B"], dims["N"], H, D), (dims["B"], dims["N"], H, D)]

    def rand(shape):
        return torch.randn(shape, generator=g).to(dtype).to(device)

    if layout == "packed":
        if op == "prompt_cross_attn":
            kv = rand(shapes[1][:2] + (2,) + shapes[1][2:])
            return [rand(shapes[0]), *kv.unbind(2)]
        qkv = rand(shapes[0][:2] + (3,) + shapes[0][2:])
        out = list(qkv.unbind(2))
        if op == "intra_frame_attn":
            out += list(rand(shapes[3][:2] + (2,) + shapes[3][2:]).unbind(2))
        return out
    out = []
    for s in shapes:
        base = (s[1], s[0], *s[2:]) if layout == "seqfirst" and len(s) == 4 else s
        if nan_pad:
            buf = torch.full(tuple(n + 2 for n in base), float("nan"), dtype=dtype, device=device)
            view = buf[tuple(slice(1, 1 + n) for n in base)]
            view.copy_(rand(base))
            x = view
        else:
            x = rand(base)
        out.append(x.transpose(0, 1) if layout == "seqfirst" and len(s) == 4 else x)
    return out


def ref64(op, tensors, do, scale):
    """float64 forward (out, lse) and gradients from the explicit reference formulas."""
    t = [x.detach().double() for x in tensors]
    out, lse = getattr(reference, f"{op}_fwd")(*t, scale)
    grads = getattr(reference, f"{op}_bwd")(do.double(), *t, out, lse, scale)
    return out, lse, grads


def eager_same_dtype(op, tensors, do, scale):
    """A plain eager attention in the inputs' own dtype (no upcast), with autograd:
    the yardstick of the tolerance rule."""
    t = [x.detach().clone().requires_grad_(True) for x in tensors]
    if op == "intra_frame_attn":
        q, k, v = t[0], torch.cat([t[1], t[3]], 1), torch.cat([t[2], t[4]], 1)
    else:
        q, k, v = t
        if q.dim() == 3:
            q = q.unsqueeze(0).expand(k.shape[0], *q.shape)
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    p = torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)
    o = (p @ vh).transpose(1, 2)
    grads = torch.autograd.grad(o, t, do)
    return o.detach(), grads


def max_err(a, b) -> float:
    d = (a.double() - b.double()).abs()
    return float("inf") if torch.isnan(d).any() else (d.max().item() if d.numel() else 0.0)


def check(name, got, want64, eager, dtype):
    assert got.shape == want64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want64.shape)}"
    assert got.dtype == dtype, f"{name}: dtype {got.dtype} != {dtype}"
    assert not torch.isnan(got).any(), f"{name}: NaN"
    err, base = max_err(got, want64), max_err(eager, want64)
    assert err <= 2 * base + ATOL[dtype], f"{name}: error {err:.3g} > 2 * eager {base:.3g} + {ATOL[dtype]:.1g}"


def poison_allocator(nbytes=64 << 20):
    """Leave NaN in the caching allocator's free blocks, so outputs the kernels
    fail to write come back as NaN."""
    x = torch.full((nbytes // 4,), float("nan"), device="cuda")
    del x


def run_and_check(op, tensors, dtype, scale=None, backend="cuda"):
    D = tensors[0].shape[-1]
    scale = D**-0.5 if scale is None else scale
    fwd = getattr(torch.ops.xclip, f"{op}_fwd_cuda")
    bwd = getattr(torch.ops.xclip, f"{op}_bwd_cuda")
    poison_allocator()
    out, lse = fwd(*tensors, scale)
    torch.cuda.synchronize()
    g = torch.Generator(device="cuda").manual_seed(1)
    do = torch.randn(out.shape, generator=g, device="cuda").to(dtype)
    want_out, want_lse, want_grads = ref64(op, tensors, do, scale)
    eager_out, eager_grads = eager_same_dtype(op, tensors, do, scale)
    check(f"{op} out", out, want_out, eager_out, dtype)
    assert out.is_contiguous() and lse.is_contiguous() and lse.dtype == torch.float32
    assert lse.shape == want_lse.shape
    assert max_err(lse, want_lse) <= 1e-3 + 1e-3 * want_lse.abs().max().item()
    poison_allocator()
    grads = bwd(do, *tensors, out, lse, scale)
    torch.cuda.synchronize()
    names = ARG_NAMES[op]
    assert len(grads) == len(names)
    for name, gr, w, e, t in zip(names, grads, want_grads, eager_grads, tensors):
        assert gr.shape == t.shape
        check(f"{op} d{name}", gr, w, e, dtype)
    # and through the public op with autograd
    leaves = [x.detach().clone().requires_grad_(True) for x in tensors]
    o2 = getattr(xk, op)(*leaves, scale=scale, backend=backend)
    o2.backward(do)
    torch.testing.assert_close(o2.detach(), out, rtol=0, atol=0)
    for name, leaf, gr in zip(names, leaves, grads):  # dQ sums float32 atomics: order may differ
        torch.testing.assert_close(leaf.grad, gr, msg=lambda m, name=name: f"autograd d{name}: {m}")


DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CASES = {
    "cross_frame_attn": [
        dict(B=1, T=1, H=1, D=32),
        dict(B=2, T=7, H=2, D=64),
        dict(B=3, T=8, H=3, D=80),
        dict(B=2, T=9, H=2, D=96),
        dict(B=2, T=51, H=2, D=128),
        dict(B=1, T=257, H=1, D=64),
    ],
    "intra_frame_attn": [
        dict(F=1, N=1, M=1, H=1, D=32),
        dict(F=2, N=17, M=8, H=2, D=80),
        dict(F=3, N=197, M=1, H=2, D=64),
        dict(F=2, N=198, M=3, H=1, D=96),
        dict(F=1, N=257, M=2, H=2, D=128),
    ],
    "prompt_cross_attn": [
        dict(B=1, K=1, N=1, H=1, D=32),
        dict(B=2, K=7, N=9, H=2, D=64, shared=True),
        dict(B=3, K=51, N=197, H=2, D=80),
        dict(B=4, K=400, N=17, H=1, D=64, shared=True),
        dict(B=2, K=9, N=257, H=2, D=128, shared=True),
        dict(B=2, K=33, N=8, H=3, D=96),
    ],
}
PARAMS = [
    pytest.param(op, i, dt, id=f"{op}-{i}-{str(dt)[6:]}") for op in OPS for i in range(len(CASES[op])) for dt in DTYPES
]


@pytest.mark.parametrize("op,case,dtype", PARAMS)
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_against_float64_reference(op, case, dtype):
    run_and_check(op, make(op, CASES[op][case], dtype, seed=case), dtype)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["packed", "seqfirst", "nan_pad", "seqfirst_nan_pad"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_strided_and_nan_padded_inputs(op, layout, dtype):
    dims = {
        "cross_frame_attn": dict(B=3, T=9, H=2, D=64),
        "intra_frame_attn": dict(F=2, N=37, M=2, H=3, D=64),
        "prompt_cross_attn": dict(B=2, K=13, N=41, H=2, D=64, shared=True),
    }[op]
    base = layout.replace("_nan_pad", "") if layout != "nan_pad" else "contiguous"
    tensors = make(op, dims, dtype, layout=base, nan_pad="nan_pad" in layout, seed=3)
    if layout != "nan_pad":
        assert not all(t.is_contiguous() for t in tensors)
    run_and_check(op, tensors, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("op", OPS)
def test_more_than_65535_batch_heads(op):
    dims = {
        "cross_frame_attn": dict(B=33000, T=3, H=2, D=32),
        "intra_frame_attn": dict(F=33000, N=2, M=1, H=2, D=32),
        "prompt_cross_attn": dict(B=33000, K=2, N=3, H=2, D=32, shared=True),
    }[op]
    tensors = make(op, dims, torch.float16, seed=5)
    run_and_check(op, tensors, torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_and_triton_agree(op, dtype):
    if not xk.available_backends()["triton"].available:
        pytest.skip(xk.available_backends()["triton"].reason)
    dims = {
        "cross_frame_attn": dict(B=4, T=8, H=4, D=64),
        "intra_frame_attn": dict(F=4, N=197, M=1, H=4, D=64),
        "prompt_cross_attn": dict(B=4, K=40, N=197, H=4, D=64, shared=True),
    }[op]
    tensors = make(op, dims, dtype, seed=7)
    g = torch.Generator(device="cuda").manual_seed(2)
    res = {}
    for backend in ("cuda", "triton"):
        leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
        o = getattr(xk, op)(*leaves, backend=backend)
        do = torch.randn(o.shape, generator=g.manual_seed(2), device="cuda").to(dtype)
        o.backward(do)
        res[backend] = [o.detach()] + [x.grad for x in leaves]
    tol = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    for name, a, b in zip(["out"] + ARG_NAMES[op], res["cuda"], res["triton"]):
        scale = 1.0 + b.abs().max().item()
        assert max_err(a, b) <= tol * scale, f"{op} {name}: cuda and triton differ by {max_err(a, b):.3g}"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cpp_side_argument_checks():
    q = torch.randn(2, 4, 2, 32, device="cuda")
    with pytest.raises(RuntimeError, match=r"cross_frame_attn_fwd_cuda: argument 'q' must be 4-D"):
        torch.ops.xclip.cross_frame_attn_fwd_cuda(q[0], q, q, 1.0)
    with pytest.raises(RuntimeError, match=r"argument 'v' has dtype"):
        torch.ops.xclip.cross_frame_attn_fwd_cuda(q, q, q.half(), 1.0)
    with pytest.raises(RuntimeError, match=r"argument 'k' has shape"):
        torch.ops.xclip.cross_frame_attn_fwd_cuda(q, q[:, :3], q, 1.0)
    with pytest.raises(RuntimeError, match=r"argument 'k' must be a CUDA tensor"):
        torch.ops.xclip.cross_frame_attn_fwd_cuda(q, q.cpu(), q, 1.0)
    with pytest.raises(RuntimeError, match=r"head_dim 160 is not supported"):
        x = torch.randn(1, 2, 1, 160, device="cuda")
        torch.ops.xclip.cross_frame_attn_fwd_cuda(x, x, x, 1.0)
    km = torch.randn(2, 9, 2, 32, device="cuda")
    with pytest.raises(RuntimeError, match=r"intra_frame_attn_fwd_cuda: argument 'k_msg' has shape .* M = 9"):
        torch.ops.xclip.intra_frame_attn_fwd_cuda(q, q, q, km, km, 1.0)
    with pytest.raises(RuntimeError, match=r"prompt_cross_attn_fwd_cuda: argument 'k' has shape"):
        kv = q[:, :, :1].contiguous()  # one head where q has two
        torch.ops.xclip.prompt_cross_attn_fwd_cuda(q[0], kv, kv, 1.0)
    out, lse = torch.ops.xclip.cross_frame_attn_fwd_cuda(q, q, q, 1.0)
    with pytest.raises(RuntimeError, match=r"argument 'lse' has dtype"):
        torch.ops.xclip.cross_frame_attn_bwd_cuda(out, q, q, q, out, lse.double(), 1.0)
    with pytest.raises(RuntimeError, match=r"argument 'grad_out' has shape"):
        torch.ops.xclip.cross_frame_attn_bwd_cuda(out[:1], q, q, q, out, lse, 1.0)
