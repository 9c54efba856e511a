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
    # padded D = 128, T_pad = 32: fp16 packed, fp32 the G = 1 path (its packed tile spills; CF.packed_max_t)
    ("cross_frame_attn", dict(B=2, T=20, H=1, D=80), "packed", True),
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



# --- the fused backward, message keys, launches, preallocated gradients ------------------


def _cf_kernels(monkeypatch, T, D, dtype):
    """(forward meta, backward kernel names) the cross-frame wrappers launch for [2, T, 3, D], nothing run."""
    calls = []

    def fake_launch(kernel, grid, args, fixed, configs, interp, key, tag):
        name = kernel.fn.__name__ if hasattr(kernel, "fn") else kernel.__name__
        calls.append((name, dict(fixed), [dict(c) for c in configs]))

    monkeypatch.setattr(C, "launch", fake_launch)
    q, k, v = (torch.empty(2, T, 3, D, dtype=dtype, device=DEVICE) for _ in range(3))
    out, lse = CF.forward(q, k, v, D ** -0.5)
    n = len(calls)
    CF.backward(torch.empty_like(out), q, k, v, out, lse, D ** -0.5)
    return calls[:n], [c[0] for c in calls[n:]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("D", [32, 64, 80, 96, 128])
def test_cross_frame_packed_routing(D, dtype, monkeypatch):
    """float32 leaves the packed kernels where their tile spills (benchmarks.static_resources, sm_80 / sm_90):
    T > 16 at padded D = 128, T > 32 at D <= 64; 16-bit stays packed up to PACK_MAX_T. Forward and backward agree."""
    limit = CF.PACK_MAX_T if dtype != torch.float32 else (16 if D > 64 else 32)
    for T in (1, 8, 9, 16, 17, 31, 32, 33, 48, 64, 65):
        fwd, bwd = _cf_kernels(monkeypatch, T, D, dtype)
        packed = T <= limit
        assert len(fwd) == 1 and fwd[0][0] == "attn_fwd_kernel"
        # packed forward: per-config G, the tile height BM = T_pad; G = 1 forward: fixed G = 1, BM from the tile lists
        assert ("G" not in fwd[0][1]) == packed, (T, D, dtype, fwd)
        if packed:
            assert all(c["BM"] == CF._pack_tp(T) for c in fwd[0][2]), fwd
            assert bwd == ["_cf_bwd_packed_kernel"], (T, D, dtype, bwd)
        else:
            assert "_cf_bwd_packed_kernel" not in bwd and bwd, (T, D, dtype, bwd)
            assert set(bwd) <= {"attn_bwd_fused_kernel", "attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel"}, bwd
        assert CF.use_packed(T, D, dtype.itemsize) == packed, (T, D, dtype)


def _check_op(op, dims, dtype, layout="contiguous", nan_pad=False, seed=0):
    """Forward and backward of ``op`` through its kernel module against the float64 oracle."""
    mod = MODULES[op]
    tensors = make_inputs(op, dims, dtype, DEVICE, layout=layout, seed=seed, nan_pad=nan_pad)
    scale = dims["D"] ** -0.5
    t64 = [t.double() for t in tensors]
    out, lse = mod.forward(*tensors, scale)
    out64, lse64 = getattr(R, f"{op}_fwd")(*t64, scale)
    eager_out, _ = getattr(R, f"{op}_fwd")(*tensors, scale)
    assert_close_rule("out", out, out64, eager_out, ATOL[dtype])
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to(dtype).to(DEVICE)
    grads = mod.backward(do, *tensors, out, lse, scale)
    grads64 = getattr(R, f"{op}_bwd")(do.double(), *t64, out64, lse64, scale)
    _, eager = eager_out_and_grads(op, tensors, do, scale)
    for name, gk, g64, ge in zip(ARGS[op], grads, grads64, eager):
        assert_close_rule(f"d{name}", gk, g64, ge, ATOL[dtype])


@pytest.mark.parametrize("N", [1, 7, 50, 197, 256, 257])
def test_intra_fused_backward_lengths(N, poison):
    """N + M <= FUSED_MAX_KEYS: the one-launch backward (X-CLIP's 50, 197, 257 and the tile edges)."""
    assert N + 1 <= C.FUSED_MAX_KEYS
    _check_op("intra_frame_attn", dict(F=1, N=N, M=1, H=1, D=16), torch.float32, seed=N)


@pytest.mark.parametrize("N", [330, 40])
def test_intra_general_backward_path(N, poison, monkeypatch):
    """Beyond FUSED_MAX_KEYS the two-launch path (N = 330 naturally; N = 40 with the limit lowered)."""
    if N < C.FUSED_MAX_KEYS:
        monkeypatch.setattr(C, "FUSED_MAX_KEYS", 16)
    assert N + 2 > C.FUSED_MAX_KEYS
    _check_op("intra_frame_attn", dict(F=1, N=N, M=2, H=1, D=16), torch.float32, layout="seqfirst", nan_pad=True,
              seed=N)


@pytest.mark.parametrize("M", range(1, 9))
def test_intra_message_counts(M, poison):
    """M = 1..8 message keys after N = 29 patch keys: they straddle the 32-key tile edge for M >= 4."""
    _check_op("intra_frame_attn", dict(F=2, N=29, M=M, H=2, D=16), torch.float32, layout="packed", seed=M)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_cross_and_prompt_long_paths(fused, poison, monkeypatch):
    """T > PACK_MAX_T (cross-frame) and batched-q prompt through the fused / general G = 1 backward."""
    if not fused:
        monkeypatch.setattr(C, "FUSED_MAX_KEYS", 16)
    _check_op("cross_frame_attn", dict(B=1, T=70, H=1, D=16), torch.float32, nan_pad=True, seed=1)
    _check_op("prompt_cross_attn", dict(B=2, K=33, N=40, H=1, D=16), torch.float32, layout="seqfirst", seed=2)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "general"])
def test_shared_q_split_reduction(fused, poison, monkeypatch):
    """Shared q with the videos split over several programs: the last split reduces the partials in-kernel."""
    if not fused:
        monkeypatch.setattr(C, "FUSED_MAX_KEYS", 16)
    monkeypatch.setattr(PC, "TARGET_PROGRAMS", 1000)
    dims = dict(B=5, K=40, N=9, H=2, D=16, shared=True)
    s, per = PC.num_splits(5, 2, 40, C.INTERP_TILE["BM"], 1000)
    assert s == 5 and per == 1
    _check_op("prompt_cross_attn", dims, torch.float32, nan_pad=True, seed=4)
    _check_op("prompt_cross_attn", dims, torch.float16, seed=5)


class _LaunchLog:
    """Records every Triton kernel launch (name, grid) under the interpreter."""

    def __init__(self, monkeypatch):
        from triton.runtime.interpreter import InterpretedFunction

        self.calls = []
        self.inside = False  # the interpreter's own tensor copies happen inside a launch
        orig = InterpretedFunction.run

        def run(fn_self, *args, grid, warmup, **kwargs):
            if not warmup:
                self.calls.append((fn_self.fn.__name__, tuple(grid) if isinstance(grid, (tuple, list)) else grid))
            self.inside = True
            try:
                return orig(fn_self, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                self.inside = False

        monkeypatch.setattr(InterpretedFunction, "run", run)


LAUNCH_CASES = [
    ("cross_frame_attn", dict(B=2, T=8, H=2, D=16), False),
    ("cross_frame_attn", dict(B=1, T=70, H=1, D=16), False),
    ("intra_frame_attn", dict(F=2, N=50, M=1, H=2, D=16), False),
    ("intra_frame_attn", dict(F=1, N=330, M=1, H=1, D=16), True),
    ("prompt_cross_attn", dict(B=3, K=9, N=17, H=2, D=16, shared=True), False),
    ("prompt_cross_attn", dict(B=3, K=9, N=17, H=2, D=16, shared=True), True),
    ("prompt_cross_attn", dict(B=2, K=9, N=17, H=2, D=16), False),
]


@pytest.mark.skipif(not INTERPRET, reason="counts launches through the interpreter")
@pytest.mark.parametrize("case", LAUNCH_CASES, ids=lambda c: _case_id((c[0], c[1], "general" if c[2] else "", False)))
def test_launch_counts(case, monkeypatch):
    """1 forward launch, at most 2 backward launches (1 on the fused path), 1-D grids, no torch compute."""
    from torch.utils._python_dispatch import TorchDispatchMode

    op, dims, general = case
    if general:
        monkeypatch.setattr(C, "FUSED_MAX_KEYS", 16)
        monkeypatch.setattr(PC, "TARGET_PROGRAMS", 1000)  # shared q: several splits, reduced in-kernel
    mod = MODULES[op]
    tensors = make_inputs(op, dims, torch.float32, DEVICE, seed=0)
    scale = dims["D"] ** -0.5
    log = _LaunchLog(monkeypatch)

    class TorchOps(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not log.inside:
                self.ops.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    with TorchOps() as fwd_ops:
        out, lse = mod.forward(*tensors, scale)
    n_fwd = len(log.calls)
    do = torch.randn_like(out)
    with TorchOps() as bwd_ops:
        mod.backward(do, *tensors, out, lse, scale)
    bwd = log.calls[n_fwd:]
    assert n_fwd == 1, log.calls
    assert 1 <= len(bwd) <= 2, bwd
    fused_path = not general and (op != "prompt_cross_attn" or not dims.get("shared"))
    if fused_path:
        assert len(bwd) == 1, bwd
    assert all(len(g) == 1 for _, g in log.calls), f"every grid is one flattened axis: {log.calls}"
    allowed = {"aten.empty", "aten.empty_strided", "aten.zeros", "aten.fill_", "aten.zero_"}  # buffers (fill_: POISON)
    for ops in (fwd_ops.ops, bwd_ops.ops):
        compute = [o for o in ops if o not in allowed and not o.startswith("aten.t") and "stride" not in o]
        assert not compute, f"torch ops besides allocations: {compute}"


@pytest.mark.parametrize("op", ["cross_frame_attn", "intra_frame_attn"])
def test_grads_into_packed_views(op, monkeypatch):
    """``grads=``: the kernels write dq, dk, dv straight into views of one packed [.., 3, H, D] buffer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    if op == "cross_frame_attn":
        dims = dict(B=2, T=9, H=2, D=16)
        lead = (2, 9)
    else:
        dims = dict(F=2, N=40, M=2, H=2, D=16)
        lead = (2, 40)
    mod = MODULES[op]
    tensors = make_inputs(op, dims, torch.float32, DEVICE, layout="packed", seed=7)
    scale = dims["D"] ** -0.5
    out, lse = mod.forward(*tensors, scale)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    packed = torch.full((*lead, 3, 2, 16), float("nan"), device=DEVICE)  # poisoned: an unwritten element stays NaN
    views = list(packed.unbind(2))
    if op == "intra_frame_attn":
        packed_m = torch.full((2, 2, 2, 2, 16), float("nan"), device=DEVICE)
        views += list(packed_m.unbind(2))

    log = _LaunchLog(monkeypatch) if INTERPRET else None

    class Allocs(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numels = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            r = func(*args, **(kwargs or {}))
            if log is not None and log.inside:  # the interpreter's own argument copies
                return r
            for t in r if isinstance(r, (tuple, list)) else [r]:
                if isinstance(t, torch.Tensor):
                    self.numels.append((str(func.overloadpacket), t.numel()))
            return r

    with Allocs() as allocs:
        got = mod.backward(do, *tensors, out, lse, scale, grads=views)
    for g, v in zip(got, views):
        assert g is v
    # no stack / cat / copy of the packed gradient (the float32 dQ scratch of the
    # fused kernel, at most one gradient's numel, is the one buffer allowed)
    big = [(f, n) for f, n in allocs.numels if n > packed.numel() // 3]
    assert not big, f"allocations larger than one gradient: {big}"
    ref = mod.backward(do, *tensors, out, lse, scale)
    for name, g, r in zip(ARGS[op], got, ref):
        assert not torch.isnan(g).any(), f"d{name}: unwritten elements"
        torch.testing.assert_close(g, r, atol=0, rtol=0, msg=f"d{name}")
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        mod.backward(do, *tensors, out, lse, scale, grads=[views[0], views[1][:, :1]] + views[2:])


@pytest.mark.skipif(not INTERPRET, reason="counts launches through the interpreter")
def test_few_pairs_take_the_general_path(monkeypatch, poison):
    """Fewer (batch, head) pairs than SMs: two launches spread over key / query blocks instead of one per pair."""
    monkeypatch.setattr(C, "FUSED_MIN_PAIRS", 10)
    for F, launches in ((2, 2), (5, 1)):  # 4 pairs -> general; 10 pairs -> fused
        log = _LaunchLog(monkeypatch)
        _check_op("intra_frame_attn", dict(F=F, N=9, M=1, H=2, D=16), torch.float32, seed=F)
        assert len(log.calls) == 1 + launches, log.calls
