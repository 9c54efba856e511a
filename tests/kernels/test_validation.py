"""Every kind of bad input of SPEC.md raises ValueError naming the argument."""

from __future__ import annotations

import pytest
import torch

import xclip_kernels as xk


def qkv(B=2, T=4, H=2, D=16, **kw):
    return [torch.randn(B, T, H, D, **kw) for _ in range(3)]


def intra(F=2, N=5, M=1, H=2, D=16):
    return [torch.randn(F, N, H, D) for _ in range(3)] + [torch.randn(F, M, H, D) for _ in range(2)]


def test_wrong_rank():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'k' must be 4-D .*got a 3-D"):
        xk.cross_frame_attn(q, k[0], v)
    a = intra()
    a[3] = a[3][:, 0]
    with pytest.raises(ValueError, match=r"argument 'k_msg' must be 4-D"):
        xk.intra_frame_attn(*a)
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'q' must be 3-D or 4-D"):
        xk.prompt_cross_attn(q[0, 0], k, v)


def test_not_a_tensor():
    q, k, v = qkv()
    with pytest.raises((ValueError, TypeError), match=r"v"):
        xk.cross_frame_attn(q, k, v.tolist())


@pytest.mark.parametrize(
    "which,shape,what",
    [
        ("k", (3, 4, 2, 16), "batch B"),
        ("v", (2, 5, 2, 16), "frames T"),
        ("k", (2, 4, 3, 16), "heads H"),
        ("v", (2, 4, 2, 8), "head_dim D"),
    ],
)
def test_mismatched_shapes_cross(which, shape, what):
    t = dict(zip("qkv", qkv()))
    t[which] = torch.randn(shape)
    with pytest.raises(ValueError, match=rf"argument '{which}' has shape .*{what}"):
        xk.cross_frame_attn(t["q"], t["k"], t["v"])


def test_mismatched_shapes_intra_and_prompt():
    a = intra()
    a[4] = torch.randn(2, 2, 2, 16)  # v_msg with M=2 while k_msg has M=1
    with pytest.raises(ValueError, match=r"argument 'v_msg' has shape .*messages M"):
        xk.intra_frame_attn(*a)
    a = intra()
    a[3] = torch.randn(3, 1, 2, 16)
    with pytest.raises(ValueError, match=r"argument 'k_msg' has shape .*frames F"):
        xk.intra_frame_attn(*a)
    q = torch.randn(3, 5, 2, 16)
    k = v = torch.randn(2, 7, 2, 16)
    with pytest.raises(ValueError, match=r"argument 'k' has shape .*batch B"):
        xk.prompt_cross_attn(q, k, v)
    with pytest.raises(ValueError, match=r"argument 'k' has shape .*heads H"):
        xk.prompt_cross_attn(torch.randn(5, 4, 16), k, v)


@pytest.mark.parametrize("M", [0, 9])
def test_message_count_out_of_range(M):
    a = intra(M=M)
    with pytest.raises(ValueError, match=r"argument 'k_msg' .*M = %d messages, expected 1 <= M <= 8" % M):
        xk.intra_frame_attn(*a)


def test_mismatched_dtypes():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'v' has dtype float16, expected float32"):
        xk.cross_frame_attn(q, k, v.half())


def test_unsupported_dtype():
    q, k, v = (t.to(torch.int32) for t in qkv())
    with pytest.raises(ValueError, match=r"argument 'q' has dtype int32"):
        xk.cross_frame_attn(q, k, v)


def test_mismatched_devices():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'k' is on device meta, expected cpu"):
        xk.cross_frame_attn(q, k.to("meta"), v)


def test_empty_head_dim():
    q, k, v = qkv(D=0)
    with pytest.raises(ValueError, match=r"argument 'q' has an empty head dim"):
        xk.cross_frame_attn(q, k, v)


def test_unsupported_head_dim_for_forced_backend():
    q, k, v = qkv(D=33)
    with pytest.raises(ValueError, match=r"backend 'cuda' cannot run.*head_dim 33 not supported"):
        xk.cross_frame_attn(q, k, v, backend="cuda")


def test_float64_refused_by_kernel_backends():
    q, k, v = qkv(dtype=torch.float64)
    for name in ("triton", "cuda"):
        with pytest.raises(ValueError, match=rf"{name}: .*dtype float64 not supported"):
            xk.cross_frame_attn(q, k, v, backend=name)


def test_unknown_backend_and_bad_scale():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'backend'.*unknown backend 'fast'"):
        xk.cross_frame_attn(q, k, v, backend="fast")
    with pytest.raises(ValueError, match=r"argument 'scale' must be a finite float"):
        xk.cross_frame_attn(q, k, v, scale=float("nan"))


def test_direct_custom_op_call_is_validated():
    q, k, v = qkv()
    with pytest.raises(ValueError, match=r"argument 'v' has shape"):
        torch.ops.xclip.cross_frame_attn_fwd(q, k, v[:, :2], 0.25, "torch")


def test_packed_variants_name_the_bad_argument():
    with pytest.raises(ValueError, match=r"cross_frame_attn_packed: argument 'qkv' must be 5-D \[B, T, 3, H, D\]"):
        xk.cross_frame_attn_packed(torch.randn(2, 4, 2, 16))
    with pytest.raises(ValueError, match=r"argument 'qkv' has shape \(2, 4, 2, 2, 16\): the q/k/v axis"):
        xk.cross_frame_attn_packed(torch.randn(2, 4, 2, 2, 16))
    qkv = torch.randn(2, 5, 3, 2, 16)
    with pytest.raises(ValueError, match=r"argument 'kv_msg' has shape .*the k/v axis"):
        xk.intra_frame_attn_packed(qkv, torch.randn(2, 1, 3, 2, 16))
    with pytest.raises(ValueError, match=r"argument 'k_msg' has shape .*frames F"):
        xk.intra_frame_attn_packed(qkv, torch.randn(3, 1, 2, 2, 16))
    with pytest.raises(ValueError, match=r"M = 9 messages"):
        xk.intra_frame_attn_packed(qkv, torch.randn(2, 9, 2, 2, 16))
    with pytest.raises(ValueError, match=r"argument 'k_msg' has dtype float64"):
        xk.intra_frame_attn_packed(qkv, torch.randn(2, 1, 2, 2, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"prompt_cross_attn_packed: argument 'kv' must be 5-D"):
        xk.prompt_cross_attn_packed(torch.randn(4, 2, 16), torch.randn(2, 5, 2, 16))
    with pytest.raises(ValueError, match=r"argument 'k' has shape .*heads H"):
        xk.prompt_cross_attn_packed(torch.randn(4, 2, 16), torch.randn(2, 5, 2, 3, 16))


def test_validation_runs_on_every_call_after_a_cached_choice():
    """The backend choice is cached; the checks are not: a bad call after good ones still raises."""
    q, k, v = qkv()
    for _ in range(2):
        xk.cross_frame_attn(q, k, v)
    with pytest.raises(ValueError, match=r"argument 'v' has shape .*frames T"):
        xk.cross_frame_attn(q, k, v[:, :3])
    with pytest.raises(ValueError, match=r"argument 'k' has dtype float64"):
        xk.cross_frame_attn(q, k.double(), v)
    with pytest.raises(ValueError, match=r"argument 'scale' must be a finite float"):
        xk.cross_frame_attn(q, k, v, scale=float("nan"))
