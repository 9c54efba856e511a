"""The CPU inference path: exact text trimming, in-place inference ops, bfloat16 on the CPU."""

from __future__ import annotations

import pytest
import torch

import xclip
from xclip.model import cpu_supports_bf16, text_length
from xclip.model.model import QuickGELU, _residual

from test_model import tiny, tokens, video

CLASS_NAMES = ["abseiling", "playing the bagpipes", "riding a bike", "x", "passing American football (not in game)",
               "eating spaghetti with chopsticks at a crowded street market in the rain"]


def _untrimmed_text(m, toks):
    """The text tower on all L positions (no trimming): the definition trimming must reproduce."""
    L = toks.shape[1]
    x = m.token_embedding(toks) + m.positional_embedding[:L]
    x = m.ln_final(m.transformer(x))
    return x[torch.arange(x.shape[0]), toks.argmax(dim=-1)] @ m.text_projection


def _clip_sized_text_model(seed=0):
    # the real tokenizer's ids (<sot> 49406, <eot> 49407) and context length 77, a small tower
    return tiny(seed=seed, vocab_size=49408, context_length=77, transformer_layers=3).double()


def _seen_lengths(m):
    seen = []
    h = m.transformer.resblocks[0].register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[1]))
    return seen, h


def test_text_length_is_last_eot_plus_one():
    toks = xclip.tokenize(CLASS_NAMES)
    ends = [int((row == 49407).nonzero()[0]) for row in toks]
    assert text_length(toks) == max(ends) + 1
    assert text_length(toks[3:4]) == ends[3] + 1 == 3  # <sot> x <eot>
    full = torch.randint(1, 400, (2, 16))
    full[:, -1] = 499
    assert text_length(full) == 16  # nothing to trim


@pytest.mark.parametrize("names", [CLASS_NAMES, CLASS_NAMES[:1], ["a", "b c"]])
def test_trimmed_text_equals_untrimmed_float64(names):
    m = _clip_sized_text_model()
    toks = xclip.tokenize(names)
    seen, h = _seen_lengths(m)
    with torch.no_grad():
        ours = m.encode_text(toks)
        h.remove()
        ref = _untrimmed_text(m, toks)
    assert seen == [text_length(toks)] and seen[0] < 77  # the padding was really dropped
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_trimming_exact_with_other_eot_ids_and_no_padding():
    m = tiny().double()
    toks = tokens(K=5, L=16)  # <eot> = 499 (the tiny vocabulary's largest id), zero padding
    toks[2, -1] = 499
    toks[2, 5:-1] = 7  # one row without padding: nothing can be trimmed
    with torch.no_grad():
        torch.testing.assert_close(m.encode_text(toks), _untrimmed_text(m, toks), rtol=0, atol=1e-12)
        short = tokens(K=3, L=16)
        seen, h = _seen_lengths(m)
        got = m.encode_text(short)
        h.remove()
        torch.testing.assert_close(got, _untrimmed_text(m, short), rtol=0, atol=1e-12)
    assert seen == [int(short.argmax(-1).max()) + 1] and seen[0] < 16


def test_trimmed_text_gradients_equal_untrimmed_float64():
    m = _clip_sized_text_model(seed=3)
    toks = xclip.tokenize(CLASS_NAMES)
    w = torch.randn(len(CLASS_NAMES), m.config.embed_dim, dtype=torch.float64)
    grads = []
    for fn in (m.encode_text, lambda t: _untrimmed_text(m, t)):
        m.zero_grad(set_to_none=True)
        (fn(toks) * w).sum().backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "positional_embedding" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=0, atol=1e-12, msg=n)


def test_trimmed_float32_logits_and_frozen_cache():
    m = _clip_sized_text_model().float().freeze_text_encoder()
    toks = xclip.tokenize(CLASS_NAMES)
    v = video()
    with torch.no_grad():
        ref = _untrimmed_text(m, toks)
        first = m.encode_text(toks)
        again = m.encode_text(toks)
        logits = m(v, toks)
        ve, pe = m.encode_video(v)
        ref_logits = m.logits_from_features(ve, pe, ref)
    assert again is first  # served from the frozen-text cache (keyed by the untrimmed tokens)
    torch.testing.assert_close(first, ref, rtol=1e-5, atol=1e-5)  # float32: summation order may differ
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)


# --- in-place inference ops: the same values as the autograd path ---------------------------------


def test_quickgelu_inplace_is_bitwise_and_autograd_safe():
    x = torch.randn(7, 33, dtype=torch.float64)
    ref = x * torch.sigmoid(1.702 * x)
    with torch.no_grad():
        y = x.clone()
        out = QuickGELU(inplace=True)(y)
    assert out.data_ptr() == y.data_ptr() and torch.equal(out, ref)
    a = x.clone().requires_grad_()
    out = QuickGELU(inplace=True)(a)  # autograd needs its input: not overwritten
    assert torch.equal(a.detach(), x) and torch.equal(out.detach(), ref)
    out.sum().backward()
    b = x.clone().requires_grad_()
    (b * torch.sigmoid(1.702 * b)).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_residual_inplace_only_without_autograd():
    x, br = torch.randn(3, 5, 8), torch.randn(3, 5, 8)
    with torch.no_grad():
        b = br.clone()
        out = _residual(x, b)
        assert out.data_ptr() == b.data_ptr() and torch.equal(out, x + br)
        shared = torch.randn(5, 8)  # a broadcast branch is never written
        assert torch.equal(_residual(x, shared), x + shared)
    xg = x.clone().requires_grad_()
    b = br.clone()
    out = _residual(xg, b)
    assert torch.equal(b, br) and out.requires_grad


def test_inference_forward_bitwise_equals_autograd_forward():
    m = tiny()
    v, t = video(), tokens()
    with torch.no_grad():
        fast = m(v, t)
    slow = m(v, t)  # grad enabled: every op out of place
    assert slow.requires_grad and torch.equal(fast, slow.detach())


# --- bfloat16 on the CPU -----------------------------------------------------------------------------


def test_cpu_supports_bf16_reads_the_cpu_flags():
    got = cpu_supports_bf16()
    assert isinstance(got, bool) and got is xclip.model.cpu_supports_bf16()
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags here")
    if not ({"avx512_bf16", "amx_bf16"} & set(flags)):
        assert got is False


def test_bf16_model_end_to_end_on_cpu():
    m32 = tiny()
    toks, v = tokens(K=4), video()
    m16 = tiny().to(torch.bfloat16)
    with torch.inference_mode():
        ref = m32(v, toks)
        out = m16(v, toks)  # a float32 video is cast to the model's dtype
        te = m16.encode_text(toks)
        ve, pe = m16.encode_video(v.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and te.dtype == ve.dtype == pe.dtype == torch.bfloat16
    assert torch.isfinite(out.float()).all()
    err = float((out.float() - ref).abs().max() / ref.abs().max())
    assert err < 5e-2, f"bf16 logits differ from float32 by {err:.3g} (relative to the largest)"
