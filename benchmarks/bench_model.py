"""Whole-model benchmarks (pytest-benchmark): ours per backend vs plain PyTorch vs transformers.

CPU (part of the test suite; ``--benchmark-disable`` runs each body once):
a tiny X-CLIP in float32; each contender's inference call and training step
runs, and its logits and first training loss agree with the reference model
(:mod:`xclip.model.reference`, float64 on the CPU, float32 on a GPU) on the
same weights, within twice the reference code's own error in the run's dtype
plus a small atol (flash-attention's rule). ``plain`` *is* the reference code,
so its cases (``plain-runs-only``) only check that it runs; its fidelity is
``tests/model/test_plain_baseline.py``. Nothing here asserts a time.

GPU (``pytest -m gpu benchmarks/bench_model.py --benchmark-enable``):
X-CLIP B/16, 8 frames, batch 32, bfloat16 (the issue's target point) for
every contender, inference and training step; ``XCLIP_BENCH_SWEEP=1`` sweeps
B/32, B/16, L/14 x 8, 16 frames x fp16, bf16. Throughput, peak memory and
model FLOP utilisation go into each benchmark's ``extra_info``. The full
comparison table (ratios, compile, CUDA graphs) is ``xclip bench``; see
``benchmarks/gpu_check.sh``.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time

import pytest
import torch
import torch.nn.functional as F

from xclip.apps import bench

CPU_SETTINGS = bench.BenchSettings(tiny=True, batch=2, frames=4, classes=5, dtype="fp32", device="cpu")


class _Suite:
    """Contenders of one configuration, built once, on one device; only one lives on the GPU at a time."""

    def __init__(self, s: bench.BenchSettings, device: torch.device) -> None:
        self.s, self.device = s, device
        self.dtype = bench.DTYPES[s.dtype] if device.type == "cuda" else torch.float32
        self._work = tempfile.TemporaryDirectory(prefix="xclip-bench-model-")
        ours, self.cfg, self.state, builders, self.skipped = bench.build_contenders(s, device, self.dtype, self._work.name)
        self.builders = dict(builders)
        self.video, self.tokens, self.labels = bench.make_inputs(s, self.cfg, device)
        self.ref_logits, self.ref_loss = bench.reference_outputs(self.state, self.cfg, self.video, self.tokens,
                                                                 self.labels, device)
        self.yardstick_err, self.yardstick_loss_err = self._reference_rounding_error()
        self.flops_infer = bench.analytic_infer_flops(self.cfg, s.batch, s.frames, s.classes)
        del ours
        self._live = None

    def _reference_rounding_error(self) -> tuple[float, float]:
        """Relative logits error and absolute loss error of the reference code itself run in the suite's dtype."""
        plain = bench.plain_model(self.state, self.cfg).to(device=self.device, dtype=self.dtype).eval()
        with torch.inference_mode():
            logits = plain.logits_from_video(self.video.to(self.dtype), plain.encode_text(self.tokens)).float()
            loss = float(F.cross_entropy(logits, self.labels))
        del plain
        return bench.rel_err(logits, self.ref_logits), abs(loss - self.ref_loss)

    def assert_close_to_reference(self, name: str, rel_err: float, loss: float | None = None) -> None:
        if name == "plain":  # the reference code itself: nothing independent to compare with here
            return
        atol = 1e-6 if self.dtype == torch.float32 else 1e-3
        bound = 2 * self.yardstick_err + atol
        assert rel_err <= bound, f"{name}: logits differ from the reference by {rel_err:.2e} (relative) > {bound:.2e}"
        if loss is not None:
            bound = 2 * self.yardstick_loss_err + atol * max(1.0, self.ref_loss)
            err = abs(loss - self.ref_loss)
            assert err <= bound, f"{name}: first training loss {loss} vs reference {self.ref_loss} (> {bound:.2e})"

    def contender(self, name: str) -> bench.Contender:
        if name not in self.builders:
            pytest.skip(f"{name} cannot run here: {self.skipped.get(name, 'not built')}")
        self._live = None
        bench._free(self.device)
        self._live = self.builders[name]()
        return self._live

    def close(self) -> None:
        self._live = None
        bench._free(self.device)
        self._work.cleanup()


def _sync_call(fn, device):
    def call():
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return call


def _record_ratio(benchmark, fn, baseline, rounds: int, device: torch.device) -> None:
    """``ratio_vs_plain`` in extra_info: ``fn`` against the plain model, calls interleaved (benchmarks/_ratio.py)."""
    from _ratio import interleaved_times

    t = interleaved_times({"x": fn, "plain": baseline}, max(3, rounds),
                          clock=time.perf_counter if device.type == "cuda" else time.process_time)
    benchmark.extra_info.update(ratio_vs_plain=min(t["x"]) / min(t["plain"]),
                                ratio_vs_plain_median=statistics.median(t["x"]) / statistics.median(t["plain"]))


def _plain_inference(suite: _Suite):
    plain = bench.plain_model(suite.state, suite.cfg).to(device=suite.device, dtype=suite.dtype).eval()
    x = suite.video.to(suite.dtype)
    with torch.inference_mode():
        text = plain.encode_text(suite.tokens)

    def run():
        with torch.inference_mode():
            return plain.logits_from_video(x, text)

    return _sync_call(run, suite.device)


def _plain_train_step(suite: _Suite, ctx, use_scaler: bool):
    plain = bench.plain_model(suite.state, suite.cfg).to(device=suite.device).train()
    with torch.no_grad(), ctx:
        text = plain.encode_text(suite.tokens)
    params = [p for n, p in plain.named_parameters() if not n.startswith(("transformer.", "token_embedding",
                                                                          "positional_embedding", "ln_final",
                                                                          "text_projection"))]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.001)
    scaler = torch.amp.GradScaler(suite.device.type, enabled=use_scaler)

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx:
            logits = plain.logits_from_video(suite.video, text)
        scaler.scale(F.cross_entropy(logits.float(), suite.labels)).backward()
        scaler.step(opt)
        scaler.update()

    return _sync_call(step, suite.device)


def _run_inference(benchmark, suite: _Suite, name: str, rounds: int = 10, warmup: int = 3) -> None:
    c = suite.contender(name)
    c.module.to(device=suite.device, dtype=suite.dtype).eval()
    with torch.inference_mode():
        text = c.text_features(suite.tokens)
        x = suite.video.to(suite.dtype)
        fn = _sync_call(lambda: c.video_logits(x, text), suite.device)
        logits = fn()
        with bench._PeakMemory(suite.device) as mem:
            if benchmark.disabled:
                benchmark(fn)
            else:
                benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
        if not benchmark.disabled and name != "plain":  # in-run baseline: the plain reference model
            _record_ratio(benchmark, fn, _plain_inference(suite), rounds, suite.device)
    err = bench.rel_err(logits, suite.ref_logits)
    suite.assert_close_to_reference(name, err)
    benchmark.extra_info.update(contender=c.name, max_rel_err_vs_ref=err, peak_bytes=mem.peak,
                                batch=suite.s.batch, flops=suite.flops_infer)
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    if not benchmark.disabled and stats is not None:
        t = stats.median
        benchmark.extra_info.update(views_per_s=suite.s.batch / t, model_tflops_per_s=suite.flops_infer / t / 1e12)


def _run_train_step(benchmark, suite: _Suite, name: str, rounds: int = 5, warmup: int = 2) -> None:
    c = suite.contender(name)
    dev, dtype = suite.device, suite.dtype
    amp = dtype != torch.float32
    m = c.module.to(device=dev, dtype=torch.float32).train()
    for n, p in m.named_parameters():
        p.requires_grad_(not c.is_text_param(n))
    ctx = torch.autocast(dev.type, dtype=dtype) if amp else torch.autocast(dev.type, enabled=False)
    with torch.no_grad(), ctx:
        text = c.text_features(suite.tokens)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.001)
    scaler = torch.amp.GradScaler(dev.type, enabled=(dtype == torch.float16))
    before = [p.detach().clone() for p in params[:4]]
    losses = []

    def step():
        opt.zero_grad(set_to_none=True)
        with ctx:
            logits = c.video_logits(suite.video, text)
        loss = F.cross_entropy(logits.float(), suite.labels)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.detach())

    fn = _sync_call(step, dev)
    fn()
    with bench._PeakMemory(dev) as mem:
        if benchmark.disabled:
            benchmark(fn)
        else:
            benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
    if not benchmark.disabled and name != "plain":  # in-run baseline: the plain reference model's step
        _record_ratio(benchmark, fn, _plain_train_step(suite, ctx, scaler.is_enabled()), rounds, dev)
    assert all(torch.isfinite(v).item() for v in losses), f"{name}: non-finite training loss"
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, params[:4])), f"{name}: step changed nothing"
    suite.assert_close_to_reference(name, 0.0, float(losses[0]))  # the loss before the first update
    benchmark.extra_info.update(contender=c.name, peak_bytes=mem.peak, batch=suite.s.batch,
                                trainable_params=sum(p.numel() for p in params))


# --- CPU: tiny sizes, part of the test suite -------------------------------------------------

# plain is the reference code itself: its cases only check that it runs
CPU_CONTENDERS = ["ours[torch]", pytest.param("plain", id="plain-runs-only"), "hf"]


@pytest.fixture(scope="module")
def cpu_suite():
    suite = _Suite(CPU_SETTINGS, torch.device("cpu"))
    yield suite
    suite.close()


def _resolve(suite: _Suite, name: str) -> str:
    if name == "hf":  # named by its attention implementation once built
        return next((n for n in suite.builders if n.startswith("hf")), name)
    return name


@pytest.mark.parametrize("name", CPU_CONTENDERS)
def test_inference_tiny_cpu(benchmark, cpu_suite, name):
    benchmark.group = "model-inference-tiny-cpu"
    _run_inference(benchmark, cpu_suite, _resolve(cpu_suite, name), rounds=3, warmup=1)


@pytest.mark.parametrize("name", CPU_CONTENDERS)
def test_train_step_tiny_cpu(benchmark, cpu_suite, name):
    benchmark.group = "model-train-tiny-cpu"
    _run_train_step(benchmark, cpu_suite, _resolve(cpu_suite, name), rounds=2, warmup=1)


# --- GPU: full sizes ------------------------------------------------------------------------------

_SWEEP = os.environ.get("XCLIP_BENCH_SWEEP", "0") not in ("", "0")
GPU_CONFIGS = (
    [(a, t, d) for a in ("ViT-B/32", "ViT-B/16", "ViT-L/14") for t in (8, 16) for d in ("bf16", "fp16")]
    if _SWEEP
    else [("ViT-B/16", 8, "bf16")]
)
GPU_CONTENDERS = ["ours[triton]", "ours[cuda]", "ours[torch]", pytest.param("plain", id="plain-runs-only"), "hf"]
GPU_BATCH = int(os.environ.get("XCLIP_BENCH_BATCH", "32"))

@pytest.fixture(scope="module")
def gpu_suites():
    suites: dict[tuple, _Suite] = {}

    def get(arch: str, frames: int, dtype: str) -> _Suite:
        key = (arch, frames, dtype)
        if key not in suites:
            for old in list(suites):  # one configuration's contenders at a time
                suites.pop(old).close()
            s = dataclasses.replace(bench.BenchSettings(), arch=arch, frames=frames, dtype=dtype, batch=GPU_BATCH,
                                    device="cuda")
            suites[key] = _Suite(s, torch.device("cuda"))
        return suites[key]

    yield get
    for s in suites.values():
        s.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", GPU_CONTENDERS)
@pytest.mark.parametrize("arch, frames, dtype", GPU_CONFIGS)
@pytest.mark.parametrize("phase", ["inference", "train"])
def test_model_gpu(benchmark, gpu_suites, phase, arch, frames, dtype, name):
    suite = gpu_suites(arch, frames, dtype)
    benchmark.group = f"model-{phase}-{arch}-T{frames}-B{GPU_BATCH}-{dtype}"
    try:
        if phase == "inference":
            _run_inference(benchmark, suite, _resolve(suite, name))
        else:
            _run_train_step(benchmark, suite, _resolve(suite, name))
    except torch.cuda.OutOfMemoryError:
        pytest.skip(f"{name}: out of memory at batch {GPU_BATCH}")
