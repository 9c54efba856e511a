"""`xclip predict` / `xclip eval` `--dtype` and `--compile` (xclip/apps/inference.py)."""

from __future__ import annotations

import json

import pytest
import torch

from test_predict import NAMES, TINY, setup  # noqa: F401  (the module fixture: tiny checkpoint, mp4 files)


def _tiny_model():
    import xclip

    torch.manual_seed(0)
    return xclip.create_model(dict(TINY), num_frames=None).eval()


def _batches(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(n, 1, 4, 3, 32, 32, generator=g)
    return [{"video": video[i:i + 2], "label": torch.arange(i, i + len(video[i:i + 2])) % len(NAMES),
             "index": torch.arange(i, i + len(video[i:i + 2]))} for i in range(0, n, 2)]


def test_inference_model_runs_in_the_dtype_and_returns_float32():
    from xclip.apps.inference import inference_model
    from xclip.model import tokenize

    m = inference_model(_tiny_model(), "bf16")
    assert all(p.dtype == torch.bfloat16 for p in m.parameters() if p.is_floating_point())
    video = torch.randn(2, 4, 3, 32, 32)
    v, p = m.encode_video(video)  # a float32 video is cast on the way in
    assert v.dtype == p.dtype == torch.bfloat16
    logits = m.logits_from_features(v, p, m.encode_text(tokenize(NAMES)))
    assert logits.dtype == torch.float32 and logits.shape == (2, len(NAMES))
    with torch.no_grad():
        ref = _tiny_model()(video, tokenize(NAMES))
    assert not torch.equal(logits, ref)  # computed in bf16, not float32 ...
    torch.testing.assert_close(logits, ref, atol=0.05 * float(ref.abs().max()), rtol=0)  # ... to bf16's rounding


def test_evaluate_with_bf16_model_agrees_with_fp32():
    from xclip.apps.inference import inference_model
    from xclip.engine import evaluate
    from xclip.model import tokenize

    tokens = tokenize(NAMES)
    r32 = evaluate(inference_model(_tiny_model(), "fp32"), _batches(), tokens, progress=False)
    r16 = evaluate(inference_model(_tiny_model(), "bf16"), _batches(), tokens, progress=False)
    with torch.no_grad():  # fp32 through the wrapper is the plain model
        ref = _tiny_model()(torch.cat([b["video"][:, 0] for b in _batches()]), tokens).softmax(-1)
    torch.testing.assert_close(r32["probs"], ref, rtol=1e-5, atol=1e-6)
    assert r16["probs"].dtype == torch.float32
    assert (r16["probs"] - r32["probs"]).abs().max() < 0.02


def test_predict_dtype_flag(setup, tmp_path):  # noqa: F811
    from xclip.apps.predict import main

    d, model, ckpt, videos, labels = setup
    out = {}
    for dt in ("fp32", "bf16"):
        path = tmp_path / f"{dt}.json"
        assert main([*videos, "--checkpoint", str(ckpt), "--labels", str(labels), "--top-k", str(len(NAMES)),
                     "--no-progress", "--json", str(path), "--dtype", dt]) == 0
        out[dt] = {p["video"]: {t["label"]: t["prob"] for t in p["top_k"]} for p in json.load(open(path))}
    assert out["fp32"].keys() == out["bf16"].keys()
    diffs = [abs(out["fp32"][v][n] - out["bf16"][v][n]) for v in out["fp32"] for n in NAMES]
    assert 0 < max(diffs) < 0.02


def test_fp16_on_the_cpu_is_one_clear_error(setup, capsys):  # noqa: F811
    from xclip.apps.predict import main

    d, model, ckpt, videos, labels = setup
    rc = main([videos[0], "--checkpoint", str(ckpt), "--labels", str(labels), "--no-progress", "--dtype", "fp16",
               "--device", "cpu"])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--dtype fp16 needs a CUDA device" in err[0]


def test_eval_parser_has_dtype_and_compile():
    from xclip.apps.eval import build_parser

    a = build_parser().parse_args(["c.yaml", "--checkpoint", "x.pth", "--dtype", "bf16", "--compile"])
    assert a.dtype == "bf16" and a.compile
    assert build_parser().parse_args(["c.yaml", "--checkpoint", "x.pth"]).dtype == "fp32"


@pytest.mark.slow
def test_compiled_inference_matches_eager():
    from xclip.apps.inference import inference_model
    from xclip.model import tokenize

    video = torch.randn(2, 4, 3, 32, 32)
    eager = inference_model(_tiny_model(), "fp32")
    comp = inference_model(_tiny_model(), "fp32", compile=True)
    with torch.no_grad():
        want = eager(video, tokenize(NAMES))
        got = comp(video, tokenize(NAMES))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
