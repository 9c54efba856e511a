"""The CPU-meaningful benchmark set for regression runs (``benchmarks/regress.py``).

Three groups, each timed by pytest-benchmark and each also reporting its ratio
against a baseline measured in the same run, interleaved call by call (so
load on a shared machine hits both alike; the ratio of the fastest calls in
process CPU time, see ``benchmarks/_ratio.py``), in ``extra_info``:

- ``op-host``: the three ops at tiny shapes, where the time is host overhead
  (validation, dispatch, custom-op and autograd plumbing), forward and
  forward+backward, per usable backend (the ``torch`` backend on a CPU;
  Triton under the interpreter is left out: it measures the interpreter).
  Baseline: the SDPA composition (``ratio_vs_sdpa``).
- ``model-cpu``: inference of a small X-CLIP in float32: ours with the torch
  backend (baseline: the plain-PyTorch model on the same weights,
  ``ratio_vs_plain``), and transformers' ``XCLIPModel`` patched with
  :func:`xclip_kernels.transformers.apply_to` (baseline: the same model
  unpatched, ``ratio_vs_transformers``).
- ``data``: decode only (8 frames of a 150-frame 144x192 H.264 video) per
  decoder, and the training / test pipelines (decode + transforms to 112 px)
  per decoder. Baseline: PyAV decoding the same frames
  (``ratio_vs_pyav_decode``).

With ``--benchmark-disable`` (the test suite's default) every body runs once
and no ratio is measured. Never fails on a time.
"""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

import xclip_kernels as xk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ratio import record as run  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
BACKENDS = [b for b, st in xk.available_backends().items() if st.available and not (b == "triton" and INTERPRET)]


# --- op host overhead -------------------------------------------------------------------------

OPS = {
    "cross_frame_attn": dict(q=(2, 8, 2, 32), k=(2, 8, 2, 32), v=(2, 8, 2, 32)),
    "intra_frame_attn": dict(q=(16, 17, 2, 32), k=(16, 17, 2, 32), v=(16, 17, 2, 32), k_msg=(16, 1, 2, 32),
                             v_msg=(16, 1, 2, 32)),
    "prompt_cross_attn": dict(q=(10, 2, 32), k=(2, 16, 2, 32), v=(2, 16, 2, 32)),
}


def _sdpa(op: str, t: dict):
    """The best plain-PyTorch composition of ``op`` ([B, L, H, D] in and out)."""
    if op == "intra_frame_attn":
        k, v = torch.cat([t["k"], t["k_msg"]], 1), torch.cat([t["v"], t["v_msg"]], 1)
    else:
        k, v = t["k"], t["v"]
    q = t["q"].unsqueeze(0).expand(k.shape[0], *t["q"].shape) if t["q"].dim() == 3 else t["q"]
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_op_host(benchmark, op, backend, mode):
    benchmark.group = f"op-host {op} {mode}"
    dev = "cuda" if backend in ("triton", "cuda") and torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(0)
    grad = mode == "fwd+bwd"
    t = {n: torch.randn(s, generator=g).to(dev).requires_grad_(grad) for n, s in OPS[op].items()}
    fn_op = getattr(xk, op)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def call(f):
        def go():
            if grad:
                f().sum().backward()
            else:
                with torch.no_grad():
                    f()
            sync()
        return go

    ours = call(lambda: fn_op(*t.values(), backend=backend))
    base = call(lambda: _sdpa(op, t))
    torch.testing.assert_close(fn_op(*t.values(), backend=backend), _sdpa(op, t), atol=1e-4, rtol=1e-4)
    run(benchmark, ours, base, "sdpa", rounds=200, reps=200, cuda=dev == "cuda", op=op, backend=backend, mode=mode,
        device=dev)


# --- model inference on the CPU ----------------------------------------------------------------

SMALL = dict(embed_dim=128, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16,
             transformer_width=128, transformer_heads=4, transformer_layers=2, vision_heads=4, mit_heads=4,
             prompt_heads=4)
FRAMES, BATCH, CLASSES = 8, 2, 10


@pytest.fixture(scope="module")
def models():
    import xclip
    from xclip.model.reference import PlainXCLIP

    torch.manual_seed(0)
    ours = xclip.create_model("ViT-B/16", num_frames=FRAMES, **SMALL).eval()
    cfg = ours.config
    plain = PlainXCLIP.from_model(ours).eval()
    g = torch.Generator().manual_seed(1)
    video = torch.randn(BATCH, FRAMES, 3, cfg.image_resolution, cfg.image_resolution, generator=g)
    tokens = xclip.tokenize([f"class number {i}" for i in range(CLASSES)])
    out = {"ours": ours, "plain": plain, "video": video, "tokens": tokens}
    try:
        from transformers import XCLIPModel

        from xclip_kernels.transformers import patched_copy

        with tempfile.TemporaryDirectory() as d:
            ours.save_pretrained(d)
            hf = XCLIPModel.from_pretrained(d, attn_implementation="sdpa").eval()
        out["hf"], out["hf_patched"] = hf, patched_copy(hf)
    except Exception as e:  # transformers missing: that half is skipped
        out["hf_error"] = f"{type(e).__name__}: {e}"
    return out


@pytest.mark.parametrize("backend", ["torch"])
def test_model_inference_ours(benchmark, models, backend):
    benchmark.group = "model-cpu inference"
    ours, plain, video, tokens = models["ours"], models["plain"], models["video"], models["tokens"]
    ours.set_attn_backend(backend)

    def f_ours():
        with torch.inference_mode():
            return ours(video, tokens)

    def f_plain():
        with torch.inference_mode():
            return plain.logits_from_video(video, plain.encode_text(tokens))

    torch.testing.assert_close(f_ours(), f_plain(), atol=1e-3, rtol=1e-3)
    run(benchmark, f_ours, f_plain, "plain", rounds=10, reps=10, contender=f"ours[{backend}]")


def test_model_inference_transformers_patched(benchmark, models):
    benchmark.group = "model-cpu inference"
    if "hf" not in models:
        pytest.skip(models["hf_error"])
    hf, hp, video, tokens = models["hf"], models["hf_patched"], models["video"], models["tokens"]

    def call(m):
        def go():
            with torch.inference_mode():
                return m(input_ids=tokens, pixel_values=video).logits_per_video
        return go

    torch.testing.assert_close(call(hp)(), call(hf)(), atol=1e-4, rtol=1e-4)
    run(benchmark, call(hp), call(hf), "transformers", rounds=10, reps=10, contender="transformers+xk")


# --- data pipeline -------------------------------------------------------------------------------

DECODERS = ["torchcodec", "pyav", "decord"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from xclip.data.lists import read_video_list
    from xclip.data.throughput import write_test_videos

    root = str(tmp_path_factory.mktemp("bench-videos"))
    lf = write_test_videos(root, 3, 150, 144, 192)
    return root, lf, [p for p, _ in read_video_list(lf, root)]


def _need(decoder: str):
    from xclip.data.video_io import decoder_status

    ok, why = decoder_status(decoder)
    if not ok:
        pytest.skip(why)


def _decode_all(paths, decoder):
    from xclip.data.sampling import segment_indices
    from xclip.data.video_io import open_video

    def go():
        for p in paths:
            with open_video(p, decoder) as r:
                r.get_frames(segment_indices(len(r), 8, train=False)[0])
    return go


@pytest.mark.parametrize("decoder", DECODERS)
def test_decode_only(benchmark, videos, decoder):
    _need(decoder)
    benchmark.group = "data decode-only (3 videos x 8 frames)"
    _, _, paths = videos
    run(benchmark, _decode_all(paths, decoder), _decode_all(paths, "pyav"), "pyav_decode", rounds=5, reps=8,
        decoder=decoder, clips=len(paths))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["train", "test"])
def test_pipeline(benchmark, videos, mode, decoder):
    _need(decoder)
    from xclip.data import VideoDataset

    benchmark.group = f"data {mode} pipeline (3 clips, 112 px)"
    root, lf, paths = videos
    ds = VideoDataset(lf, root, num_frames=8, mode=mode, input_size=112, decoder=decoder)

    def go():
        for i in range(len(ds)):
            assert ds[i] is not None
    run(benchmark, go, _decode_all(paths, "pyav"), "pyav_decode", rounds=3, reps=5, decoder=decoder, mode=mode,
        clips=len(paths))
