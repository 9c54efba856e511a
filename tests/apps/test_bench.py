"""``xclip bench`` at tiny sizes on the CPU: every path runs and agrees with the reference model (no timing is asserted).

The reference is :mod:`xclip.model.reference` in float64. The ``plain`` contender is that same code in float32, so
its error is only rounding: it is the yardstick (flash-attention's rule: the others stay within twice it plus a small
atol), not evidence that plain is right. That evidence is ``tests/model/test_plain_baseline.py`` and ``tests/model/test_model.py``
(our model, transformers' model and the reference agree).
"""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

from xclip.apps import bench
from xclip.apps.bench import BenchSettings, analytic_infer_flops, build_contenders, make_inputs

ATOL_REL = 1e-6  # relative to max |reference logits|

TINY = ["--tiny", "--batch", "2", "--frames", "4", "--classes", "5", "--warmup", "0", "--iters", "1",
        "--train-iters", "1", "--strict"]


@pytest.fixture(scope="module")
def eager_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_eager")
    rc = bench.main(TINY + ["--out", str(out)])
    return rc, out, json.loads((out / "results.json").read_text())


def _assert_within_plain_rounding(records):
    """Every contender's logits vs the float64 reference: at most 2x the plain float32 error + atol."""
    ok = {r["contender"]: r for r in records if r["status"] == "ok"}
    yardstick = ok["plain"]["max_rel_err_vs_ref"]
    assert 0 < yardstick < 1e-5  # float32 against float64: rounding, never exactly zero
    for name, r in ok.items():
        assert r["ref_dtype"] == "float64"
        assert r["max_rel_err_vs_ref"] <= 2 * yardstick + ATOL_REL, (name, r["max_rel_err_vs_ref"], yardstick)
        # the training path: its loss before the first update is the reference model's loss
        assert abs(r["train_loss_first"] - r["ref_loss"]) <= 1e-5 * r["ref_loss"], name
    return ok


def test_eager_run_contenders_match_reference(eager_run):
    rc, out, records = eager_run
    assert rc == 0
    ok = _assert_within_plain_rounding(records)
    assert {"ours[torch]", "plain"} <= set(ok)
    assert any(name.startswith("hf[") for name in ok)
    # the text tower is frozen: every contender trains the same number of weights
    assert len({r["trainable_params"] for r in ok.values()}) == 1
    # FLOPs counted on our model equal the count by hand; training costs about 3x inference
    r = ok["ours[torch]"]
    assert r["flops_infer"] == r["flops_infer_analytic"] > 0
    assert 2.0 < r["flops_train"] / r["flops_infer"] < 3.5


def test_eager_run_writes_every_field_runs_only(eager_run):
    """Only that the harness runs and fills its table (timings are not checked against anything)."""
    rc, out, records = eager_run
    ok = {r["contender"]: r for r in records if r["status"] == "ok"}
    for name, r in ok.items():
        assert r["dtype"] == "float32" and r["mode"] == "eager"
        assert r["views_per_s"] > 0 and r["videos_per_s"] == pytest.approx(r["views_per_s"])
        assert r["train_step_s"] > 0 and r["trainable_params"] > 0
        assert r["infer_peak_bytes"] is None and r["train_peak_bytes"] is None  # CPU: n/a
        assert r["infer_mfu"] > 0 and r["train_mfu"] > 0
        assert r["infer_speedup_vs_plain"] > 0 and r["train_speedup_vs_hf"] > 0
    assert ok["plain"]["infer_speedup_vs_plain"] == pytest.approx(1.0)
    # backends that cannot run here are listed with the reason
    skipped = [x for x in records if x["status"].startswith("skipped")]
    assert all(x["contender"].startswith("ours[") for x in skipped)
    for name in ("results.json", "results.jsonl", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "results.md").read_text()
    assert "ours[torch]" in md and "| plain |" in md and "TFLOP/s" in md


def test_report_rebuilds_outputs(eager_run, tmp_path):
    _, out, records = eager_run
    (tmp_path / "results.jsonl").write_text((out / "results.jsonl").read_text())
    assert bench.main(["--report", str(tmp_path)]) == 0
    rebuilt = json.loads((tmp_path / "results.json").read_text())
    assert [r["contender"] for r in rebuilt] == [r["contender"] for r in records]
    assert (tmp_path / "results.md").read_text().count("\n| ") == len(records) + 1


def test_compiled_path_agrees_with_reference(tmp_path):
    # aot_eager traces through the custom ops' fake kernels and autograd without inductor's C++ build
    rc = bench.main(
        TINY + ["--compile", "--compile-backend", "aot_eager", "--contenders", "ours", "plain", "--backends", "torch",
                "--out", str(tmp_path)]
    )
    assert rc == 0
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["contender"] for r in records] == ["ours[torch]", "plain"]
    assert all(r["status"] == "ok" and r["mode"] == "compile" for r in records)
    _assert_within_plain_rounding(records)


def test_hf_adapter_matches_hf_forward():
    """The cached-text path used for transformers' model equals XCLIPModel.forward."""
    s = BenchSettings(tiny=True, batch=2, frames=4, classes=3, dtype="fp32", contenders=("hf",))
    dev = torch.device("cpu")
    with tempfile.TemporaryDirectory() as work:
        _, cfg, _, builders, _ = build_contenders(s, dev, torch.float32, work)
        video, tokens, _ = make_inputs(s, cfg, dev)
        (name, build), = builders
        c = build()
        c.module.eval()
        with torch.no_grad():
            mine = c.video_logits(video, c.text_features(tokens))
            full = c.module(input_ids=tokens, pixel_values=video).logits_per_video
    assert mine.shape == (2, 3)
    assert (mine - full).abs().max() <= 1e-5 * full.abs().max()


def test_hf_patched_contender_runs_our_ops_and_matches_hf():
    """``hf-xk``: transformers' model with apply_to; same logits as ``hf`` within float32 rounding, and the
    fused ops really run (counted through the dispatcher)."""
    s = BenchSettings(tiny=True, batch=2, frames=4, classes=3, dtype="fp32", contenders=("hf", "hf-xk"))
    dev = torch.device("cpu")
    with tempfile.TemporaryDirectory() as work:
        _, cfg, _, builders, _ = build_contenders(s, dev, torch.float32, work)
        video, tokens, _ = make_inputs(s, cfg, dev)
        assert [n for n, _ in builders] == ["hf", "hf-xk"]
        plain_hf, patched = (b() for _, b in builders)
        assert patched.name.startswith("hf-xk[") and plain_hf.name.startswith("hf[")
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad():
            ref = plain_hf.video_logits(video, plain_hf.text_features(tokens))
            with FlopCounterMode(display=False) as fc:
                got = patched.video_logits(video, patched.text_features(tokens))
    ops = {str(k) for k in fc.get_flop_counts().get("Global", {})}
    assert any("cross_frame_attn" in o for o in ops) and any("intra_frame_attn" in o for o in ops), ops
    assert any("prompt_cross_attn" in o for o in ops), ops
    assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_analytic_flops_match_the_paper():
    """The paper's GFLOPs (multiply-adds) per view: B/32 8f 39, B/16 8f 145, L/14 8f 658 (a few % tolerance)."""
    from xclip.model.config import arch_config

    for arch, frames, gmacs in (("ViT-B/32", 8, 39), ("ViT-B/16", 8, 145), ("ViT-L/14", 8, 658), ("ViT-B/16", 16, 287)):
        per_view = analytic_infer_flops(arch_config(arch, num_frames=frames), 1, frames, 400) / 2 / 1e9
        assert abs(per_view - gmacs) / gmacs < 0.05, (arch, frames, per_view)


def test_measurement_helpers():
    dev = torch.device("cpu")
    assert bench.measure_matmul_tflops(dev, torch.float32, size=64, iters=2) > 0
    calls = []
    times = bench.time_calls(lambda: calls.append(1), warmup=2, iters=3, device=dev)
    assert len(times) == 3 and len(calls) == 5 and all(t >= 0 for t in times)
    assert bench.count_flops(lambda: torch.randn(4, 8) @ torch.randn(8, 16)) == 2 * 4 * 8 * 16


@pytest.mark.parametrize(
    "args, match",
    [
        (["--views", "4y3"], "CLIPSxCROPS"),
        (["--views", "0x3"], "at least one"),
        (["--batch", "0"], "batch"),
        (["--no-infer", "--no-train"], "nothing to measure"),
        (["--backends", "nosuch"], "unknown backend"),
        (["--backends", "cuda"], "cannot run"),
        (["--cuda-graphs"], "CUDA device"),
        (["--modes", "eager", "--frames", "4", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_arguments_raise_value_error(args, match, tmp_path):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match=match):
        bench.main(TINY + args + ["--out", str(tmp_path)])


def test_cli_routes_to_bench(capsys):
    from xclip.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "--cuda-graphs" in capsys.readouterr().out


def test_gpu_check_script_runs_its_stages_on_cpu(tmp_path):
    """benchmarks/gpu_check.sh end to end with a tiny model (the GPU run uses the same code paths)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils timeout")
    root = Path(__file__).resolve().parents[2]
    env = dict(
        os.environ,
        OUT=str(tmp_path),
        PYTHON=sys.executable,
        GPU_CHECK_BUDGET="400",
        XBENCH_EXTRA="--tiny --frames 4 --batch 2 --classes 5 --warmup 0 --iters 1 --modes eager --contenders plain "
        "--no-train",
    )
    proc = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "env", "model"], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| env | ok |" in md
    assert "| model |" in md  # without a GPU its --cuda-graphs half fails (recorded, not fatal)
    assert "## Whole model" in md and "| plain |" in md
    records = [json.loads(line) for line in (tmp_path / "model" / "results.jsonl").read_text().splitlines()]
    assert [r["contender"] for r in records] == ["plain"] and records[0]["status"] == "ok"
    assert (tmp_path / "gpu_check.log").stat().st_size > 0
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh"), "nosuchstage"], env=env, cwd=root,
                       check=True, capture_output=True, timeout=60)
