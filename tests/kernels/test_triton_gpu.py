"""The Triton kernels on a GPU: bfloat16, the real X-CLIP shapes and B*H > 65,535.

Shapes (head_dim 64 throughout):
- cross_frame_attn: message tokens of B videos, T in (8, 16, 32), H = 12
  (ViT-B, width 768) or 16 (ViT-L/14, width 1024);
- intra_frame_attn: F = B*T frames of N = 50 (B/32), 197 (B/16), 257 (L/14)
  patch tokens plus M = 1 message token;
- prompt_cross_attn: K = 400 class queries (shared by the videos) over the N
  visual tokens, H = 8 (text width 512) or 12 (768).

Checked against the float64 reference with the CONVENTIONS.md rule (error <=
2x the eager same-dtype error + atol), outputs NaN-poisoned. Nothing here is
timed. Skipped without CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"), reason="TRITON_INTERPRET=1 runs the CPU tests"
    ),
]

triton = pytest.importorskip("triton", reason="triton is not installed")

from xclip_kernels import reference as R  # noqa: E402
from op_cases import ARGS, ATOL, assert_close_rule, eager_out_and_grads  # noqa: E402

ARCH = {  # (visual heads, tokens per frame, prompt heads)
    "B/32": (12, 50, 8),
    "B/16": (12, 197, 8),
    "L/14": (16, 257, 12),
}
D = 64


def _mods():
    from xclip_kernels.triton import cross_frame_attn, intra_frame_attn, prompt_cross_attn

    return {"cross_frame_attn": cross_frame_attn, "intra_frame_attn": intra_frame_attn, "prompt_cross_attn": prompt_cross_attn}


@pytest.fixture
def poison(monkeypatch):
    from xclip_kernels.triton import _common

    monkeypatch.setattr(_common, "POISON", True)



def _check(op, tensors, dtype, grads=True):
    mod = _mods()[op]
    scale = tensors[0].shape[-1] ** -0.5
    out, lse = mod.forward(*tensors, scale)
    t64 = [t.double() for t in tensors]
    out64, lse64 = getattr(R, f"{op}_fwd")(*t64, scale)
    do = torch.randn_like(out)
    eager_out, eager_grads = eager_out_and_grads(op, tensors, do, scale)
    assert_close_rule("out", out, out64, eager_out, ATOL[dtype])
    assert not torch.isnan(lse).any()
    torch.testing.assert_close(lse.double(), lse64, atol=1e-3, rtol=1e-4)
    if not grads:
        return
    got = mod.backward(do, *tensors, out, lse, scale)
    ref = getattr(R, f"{op}_bwd")(do.double(), *t64, out64, lse64, scale)
    for name, t, g, r, e in zip(ARGS[op], tensors, got, ref, eager_grads):
        assert g.shape == t.shape and g.dtype == t.dtype
        assert_close_rule(f"d{name}", g, r, e, ATOL[dtype])


def _randn(*shape, dtype):
    return torch.randn(*shape, device="cuda", dtype=torch.float32).to(dtype)


DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16"), pytest.param(torch.float32, id="fp32")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [8, 16, 32])
@pytest.mark.parametrize("arch", list(ARCH))
def test_cross_frame_xclip_shapes(arch, T, dtype, poison):
    torch.manual_seed(T)
    H = ARCH[arch][0]
    B = 16
    # sequence-first [T, B, H, D] as the model holds it, permuted (strided)
    q, k, v = (_randn(T, B, H, D, dtype=dtype).transpose(0, 1) for _ in range(3))
    _check("cross_frame_attn", [q, k, v], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("T", [8, 16, 32])
@pytest.mark.parametrize("arch", list(ARCH))
def test_intra_frame_xclip_shapes(arch, T, dtype, poison):
    torch.manual_seed(T + 1)
    H, N, _ = ARCH[arch]
    F = 2 * T  # two videos
    qkv = _randn(F, N, 3, H, D, dtype=dtype)  # views of a packed in_proj
    kv_m = _randn(F, 1, 2, H, D, dtype=dtype)
    _check("intra_frame_attn", [*qkv.unbind(2), *kv_m.unbind(2)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shared", [True, False], ids=["shared_q", "batched_q"])
@pytest.mark.parametrize("arch", list(ARCH))
def test_prompt_cross_xclip_shapes(arch, shared, dtype, poison):
    torch.manual_seed(7)
    _, N, H = ARCH[arch]
    B, K = 4, 400
    q = _randn(K, H, D, dtype=dtype) if shared else _randn(B, K, H, D, dtype=dtype)
    kv = _randn(B, N, 2, H, D, dtype=dtype)
    _check("prompt_cross_attn", [q, *kv.unbind(2)], dtype)


@pytest.mark.parametrize("head_dim", [32, 80, 96, 128])
def test_other_head_dims_bf16(head_dim, poison):
    torch.manual_seed(head_dim)
    q, k, v = (_randn(3, 9, 4, head_dim, dtype=torch.bfloat16) for _ in range(3))
    km, vm = (_randn(3, 2, 4, head_dim, dtype=torch.bfloat16) for _ in range(2))
    _check("intra_frame_attn", [q, k, v, km, vm], torch.bfloat16)
    _check("cross_frame_attn", [q, k, v], torch.bfloat16)
    _check("prompt_cross_attn", [q[0], k, v], torch.bfloat16)


def test_batch_heads_above_65535(poison):
    """Grid axis 0 carries B*H: 8,200 videos x 8 heads = 65,600 (cross, prompt) and F*H = 66,000 (intra)."""
    torch.manual_seed(0)
    dt = torch.bfloat16
    q, k, v = (_randn(8200, 8, 8, D, dtype=dt) for _ in range(3))
    _check("cross_frame_attn", [q, k, v], dt)
    qs = _randn(3, 8, D, dtype=dt)
    _check("prompt_cross_attn", [qs, k, v], dt)
    q, k, v = (_randn(5500, 5, 12, D, dtype=dt) for _ in range(3))
    km, vm = (_randn(5500, 1, 12, D, dtype=dt) for _ in range(2))
    _check("intra_frame_attn", [q, k, v, km, vm], dt)


@pytest.mark.parametrize("op", ["cross_frame_attn", "intra_frame_attn"])
def test_grads_into_packed_buffer_bf16(op, poison):
    """``backward(..., grads=views)`` writes bf16 gradients straight into one packed [.., 3, H, D] buffer."""
    torch.manual_seed(11)
    dt = torch.bfloat16
    mod = _mods()[op]
    if op == "cross_frame_attn":
        qkv = _randn(32, 8, 3, 12, D, dtype=dt)
        xs = list(qkv.unbind(2))
        packed = [torch.full_like(qkv, float("nan"))]
    else:
        qkv, kvm = _randn(16, 197, 3, 12, D, dtype=dt), _randn(16, 1, 2, 12, D, dtype=dt)
        xs = list(qkv.unbind(2)) + list(kvm.unbind(2))
        packed = [torch.full_like(qkv, float("nan")), torch.full_like(kvm, float("nan"))]
    views = [v for p in packed for v in p.unbind(2)]
    scale = D ** -0.5
    out, lse = mod.forward(*xs, scale)
    do = torch.randn_like(out)
    got = mod.backward(do, *xs, out, lse, scale, grads=views)
    ref = mod.backward(do, *xs, out, lse, scale)
    for g, v, r in zip(got, views, ref):
        assert g is v and not torch.isnan(g).any()
        torch.testing.assert_close(g, r, atol=0, rtol=0)


@pytest.mark.parametrize("op", ["cross_frame_attn", "intra_frame_attn", "prompt_cross_attn"])
def test_forward_backward_capture_in_cuda_graph(op):
    """The kernels (autotuned first) replay from a CUDA graph with the same result as an eager call."""
    torch.manual_seed(3)
    dt = torch.bfloat16
    mod = _mods()[op]
    if op == "cross_frame_attn":
        xs = list(_randn(32, 8, 3, 12, D, dtype=dt).unbind(2))
    elif op == "intra_frame_attn":
        xs = list(_randn(16, 50, 3, 12, D, dtype=dt).unbind(2)) + list(_randn(16, 1, 2, 12, D, dtype=dt).unbind(2))
    else:
        xs = [_randn(400, 8, D, dtype=dt)] + list(_randn(4, 50, 2, 8, D, dtype=dt).unbind(2))
    scale = D ** -0.5
    do = None

    def body():
        out, lse = mod.forward(*xs, scale)
        return (out, *mod.backward(do, *xs, out, lse, scale))

    do = torch.randn_like(mod.forward(*xs, scale)[0])
    ref = body()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        res = body()
    g.replay()
    torch.cuda.synchronize()
    for a, b in zip(res, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
