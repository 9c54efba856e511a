"""Shared machinery of the three op benchmarks (bench_<op>.py) and a standalone runner.

Contenders, per op and shape:
- every backend in ``xk.available_backends()`` that can run the inputs
  (``triton``, ``cuda`` once built, and ``torch``: the eager reference);
- ``sdpa``: the best plain-PyTorch composition, ``F.scaled_dot_product_attention``
  on the concatenated (intra-frame: ``cat(k, k_msg)``) or expanded (prompt:
  shared ``q`` expanded to ``[B, K, H, D]``) inputs.

Timing, three figures per case so host overhead and kernel time read apart:
wall clock of one synchronised step (host + GPU; pytest-benchmark's figure),
GPU stream time from CUDA events around back-to-back steps, and GPU time of
the step captured once in a CUDA graph and replayed (no host work at all; the
small ops are host-bound, so this is their kernel time). The last two exist
on a GPU only (``gpu_ms`` / ``graph_ms`` in the rows and in pytest-benchmark's
``extra_info``).

Modes: ``fwd`` (forward only, no autograd) and ``fwd+bwd`` (forward and
backward of a random output gradient). On a GPU the shapes are X-CLIP's
(bfloat16, head_dim 64); on the CPU they are tiny (float32) so the benchmark
files also run as quick tests that check each path runs and agrees with the
reference - not speed.

Standalone (no pytest-benchmark needed), writing a Markdown table::

    python benchmarks/_op_bench.py [--out table.md] [--json results.json] [--ops cross_frame_attn,...]
    python benchmarks/_op_bench.py --from-pytest-json bench.json   # table from pytest-benchmark JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import xclip_kernels as xk
from xclip_kernels import reference as R
from xclip_kernels.backends import BACKENDS

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
ON_GPU = torch.cuda.is_available() and not INTERPRET
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPE = torch.bfloat16 if ON_GPU else torch.float32
MODES = ("fwd", "fwd+bwd")
CONTENDERS = tuple(xk.available_backends()) + ("sdpa",)
D = 64

# X-CLIP sizes: (visual heads, tokens per frame) per architecture; the prompt
# generator works at the text width (8 heads for B, 12 for L/14).
_ARCH = {"B/32": (12, 50, 8), "B/16": (12, 197, 8), "L/14": (16, 257, 12)}
_VIDEOS = 8  # videos per batch on the GPU


def shapes(op: str) -> list[dict]:
    """Sizes of ``op`` to benchmark here (X-CLIP's on a GPU, tiny on the CPU)."""
    if not ON_GPU:
        return {
            "cross_frame_attn": [dict(B=2, T=5, H=2, D=16)],
            "intra_frame_attn": [dict(F=2, N=9, M=1, H=2, D=16)],
            "prompt_cross_attn": [dict(B=2, K=5, N=7, H=2, D=16, shared=True)],
        }[op]
    out = []
    for arch, (H, N, Hp) in _ARCH.items():
        for T in (8, 16, 32):
            if op == "cross_frame_attn":
                if arch != "B/32":  # B/32 and B/16 share the message width
                    out.append(dict(arch=arch, B=32, T=T, H=H, D=D))
            elif op == "intra_frame_attn":
                out.append(dict(arch=arch, F=_VIDEOS * T, N=N, M=1, H=H, D=D))
        if op == "prompt_cross_attn":
            out.append(dict(arch=arch, B=32, K=400, N=N, H=Hp, D=D, shared=True))
    return out


def shape_id(dims: dict) -> str:
    return "-".join(f"{k}{v}" if not isinstance(v, bool) else k for k, v in dims.items() if k != "arch").replace(
        "shared", "sharedq"
    ) + (f"-{dims['arch'].replace('/', '')}" if "arch" in dims else "")


def make_inputs(op: str, dims: dict, seed: int = 0) -> list[torch.Tensor]:
    """Inputs laid out as the model produces them: views of packed projections, no copies."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    H, Dh = dims["H"], dims["D"]

    def rnd(*s):
        return torch.randn(*s, generator=g, device=DEVICE, dtype=torch.float32).to(DTYPE)

    if op == "cross_frame_attn":
        return list(rnd(dims["B"], dims["T"], 3, H, Dh).unbind(2))
    if op == "intra_frame_attn":
        return list(rnd(dims["F"], dims["N"], 3, H, Dh).unbind(2)) + list(rnd(dims["F"], dims["M"], 2, H, Dh).unbind(2))
    q = rnd(dims["K"], H, Dh) if dims.get("shared") else rnd(dims["B"], dims["K"], H, Dh)
    return [q] + list(rnd(dims["B"], dims["N"], 2, H, Dh).unbind(2))


def _sdpa(op: str, tensors):
    if op == "intra_frame_attn":
        q, k, v, km, vm = tensors
        k, v = torch.cat([k, km], 1), torch.cat([v, vm], 1)
    else:
        q, k, v = tensors
        if q.dim() == 3:
            q = q.unsqueeze(0).expand(k.shape[0], *q.shape)
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return o.transpose(1, 2)


def why_not(op: str, contender: str, tensors) -> str | None:
    """Why ``contender`` cannot run these inputs here (None: it can)."""
    if contender == "sdpa":
        return None
    from xclip_kernels.ops import cross_frame_attn, intra_frame_attn, prompt_cross_attn  # noqa: F401

    mod = sys.modules[f"xclip_kernels.ops.{op}"]
    reasons = BACKENDS[contender].not_supported_reasons(mod.describe(*tensors))
    return "; ".join(reasons) if reasons else None


def forward_fn(op: str, contender: str):
    if contender == "sdpa":
        return lambda *ts: _sdpa(op, ts)
    return lambda *ts: getattr(xk, op)(*ts, backend=contender)


def sync():
    if ON_GPU:
        torch.cuda.synchronize()


def make_step(op: str, contender: str, mode: str, tensors):
    """A closure running one timed step; returns (step, result_getter)."""
    fn = forward_fn(op, contender)
    if mode == "fwd":
        def body():
            with torch.no_grad():
                return fn(*tensors)

        def step():
            out = body()
            sync()
            return out
        step.body = body
        return step
    leaves = [t.detach().requires_grad_(True) for t in tensors]
    do = torch.randn(make_out_shape(op, tensors), device=DEVICE, dtype=torch.float32).to(DTYPE)

    def body():
        for t in leaves:
            t.grad = None
        out = fn(*leaves)
        out.backward(do)
        return (out.detach(), *[t.grad for t in leaves])

    def step():
        res = body()
        sync()
        return res

    step.leaves, step.do, step.body = leaves, do, body
    return step


def make_out_shape(op, tensors):
    q, k = tensors[0], tensors[1]
    return (k.shape[0], *q.shape[-3:]) if op == "prompt_cross_attn" else tuple(q.shape)


def check_agrees(op: str, mode: str, tensors, result, step) -> None:
    """The contender's output (and gradients) match the float32 eager reference."""
    tol = dict(atol=2e-4, rtol=2e-4) if DTYPE == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    ref_in = [t.detach().float().requires_grad_(mode != "fwd") for t in tensors]
    ref = getattr(R, op)(*ref_in)
    got = result if mode == "fwd" else result[0]
    torch.testing.assert_close(got.float(), ref, **tol, msg=lambda m: f"{op} output: {m}")
    if mode != "fwd":
        ref.backward(step.do.float())
        for i, (g, r) in enumerate(zip(result[1:], ref_in)):
            torch.testing.assert_close(g.float(), r.grad, **tol, msg=lambda m, i=i: f"{op} grad {i}: {m}")


def peak_memory_mib(step) -> float | None:
    """Peak CUDA memory of one step above what was allocated before it (None on the CPU)."""
    if not ON_GPU:
        return None
    sync()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    res = step()
    peak = torch.cuda.max_memory_allocated() - base
    del res
    return peak / 2**20


def run_benchmark(benchmark, op: str, dims: dict, contender: str, mode: str):
    """Body of one pytest-benchmark case."""
    import pytest

    tensors = make_inputs(op, dims)
    reason = why_not(op, contender, tensors)
    if reason:
        pytest.skip(f"{contender} cannot run these inputs: {reason}")
    step = make_step(op, contender, mode, tensors)
    result = step()  # warm-up (compiles / autotunes) and the agreement check
    check_agrees(op, mode, tensors, result, step)
    del result
    benchmark.extra_info.update(
        op=op, contender=contender, mode=mode, shape=shape_id(dims), dtype=str(DTYPE).replace("torch.", ""),
        device=torch.cuda.get_device_name() if ON_GPU else "cpu", peak_mem_MiB=peak_memory_mib(step),
        **gpu_timings(step),
    )
    if contender == "sdpa":
        benchmark(step)
        return
    # the SDPA composition on the same inputs, timed interleaved with this contender: a ratio that
    # survives a loaded machine (benchmarks/_ratio.py; benchmarks/regress.py judges on it)
    from _ratio import record

    baseline = make_step(op, "sdpa", mode, tensors)
    baseline()
    record(benchmark, step, baseline, "sdpa", rounds=20, reps=20, cuda=ON_GPU)


# --- standalone runner ------------------------------------------------------------------


def _time_ms(step, min_time=0.5, max_iters=200) -> float:
    """Median wall-clock milliseconds of one synchronised step (host overhead + GPU work)."""
    step()
    times = []
    t_end = time.perf_counter() + min_time
    while len(times) < 5 or (time.perf_counter() < t_end and len(times) < max_iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def gpu_event_ms(step, iters: int = 20, repeats: int = 5) -> float | None:
    """GPU stream time per step from CUDA events around ``iters`` back-to-back steps (median of ``repeats``).

    Includes the gaps where the GPU waits for the host to launch the next
    kernel; compare with :func:`graph_ms` (no host in the loop) to read the
    host overhead. None on the CPU.
    """
    if not ON_GPU:
        return None
    step.body()
    torch.cuda.synchronize()
    return _event_ms(step.body, iters, repeats)


def _event_ms(run, iters: int, repeats: int) -> float:
    """Median over ``repeats`` of the CUDA-event time per call of ``iters`` back-to-back ``run()`` calls."""
    out = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(iters):
            run()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) / iters)
    return statistics.median(out)


def graph_ms(step, iters: int = 20, repeats: int = 5) -> float | None:
    """GPU time per step of the step captured once in a CUDA graph and replayed (no host overhead).

    None on the CPU; raises when the step cannot be captured.
    """
    if not ON_GPU:
        return None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (autotuning, allocator) outside the capture
        for _ in range(3):
            step.body()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        step.body()
    g.replay()
    torch.cuda.synchronize()
    ms = _event_ms(g.replay, iters, repeats)
    del g
    return ms


def gpu_timings(step) -> dict:
    """``gpu_ms`` (CUDA events) and ``graph_ms`` (CUDA graph replay) of a step; empty on the CPU."""
    if not ON_GPU:
        return {}
    res = {"gpu_ms": gpu_event_ms(step)}
    try:
        res["graph_ms"] = graph_ms(step)
    except Exception as e:  # a contender that cannot be captured still gets its other figures
        res["graph_ms"] = None
        res["graph_error"] = f"{type(e).__name__}: {str(e)[:160]}"
    return res


def run_all(ops) -> list[dict]:
    rows = []
    for op in ops:
        for dims in shapes(op):
            for mode in MODES:
                for c in CONTENDERS:
                    tensors = make_inputs(op, dims)
                    row = dict(op=op, shape=shape_id(dims), mode=mode, contender=c, ms=None, gpu_ms=None,
                               graph_ms=None, peak_mem_MiB=None)
                    reason = why_not(op, c, tensors)
                    if reason:
                        row["skipped"] = reason
                    else:
                        try:
                            step = make_step(op, c, mode, tensors)
                            res = step()
                            check_agrees(op, mode, tensors, res, step)
                            del res
                            row["peak_mem_MiB"] = peak_memory_mib(step)
                            row["ms"] = _time_ms(step)
                            row.update(gpu_timings(step))
                        except Exception as e:  # report, keep going
                            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
                    if ON_GPU:
                        torch.cuda.empty_cache()
    return rows


def rows_from_pytest_json(path: str) -> list[dict]:
    data = json.load(open(path))
    rows = []
    for b in data["benchmarks"]:
        ei = b.get("extra_info", {})
        rows.append(dict(op=ei.get("op"), shape=ei.get("shape"), mode=ei.get("mode"), contender=ei.get("contender"),
                         ms=b["stats"]["median"] * 1e3, gpu_ms=ei.get("gpu_ms"), graph_ms=ei.get("graph_ms"),
                         peak_mem_MiB=ei.get("peak_mem_MiB")))
    return rows


def table(rows: list[dict]) -> str:
    contenders = [c for c in CONTENDERS if any(r["contender"] == c for r in rows)]
    head = "| op | shape | mode | " + " | ".join(f"{c} wall / gpu / graph ms (MiB)" for c in contenders) + " |"
    lines = [head, "|" + "---|" * (3 + len(contenders))]
    keys = []
    for r in rows:
        k = (r["op"], r["shape"], r["mode"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        cells = []
        for c in contenders:
            r = next((r for r in rows if (r["op"], r["shape"], r["mode"]) == k and r["contender"] == c), None)
            if r is None or r.get("ms") is None:
                cells.append("n/a" if r is None or "skipped" in r else "error")
            else:
                mem = "" if r.get("peak_mem_MiB") is None else f" ({r['peak_mem_MiB']:.0f})"
                gpu = "" if r.get("gpu_ms") is None else f" / {r['gpu_ms']:.3f}"
                graph = "" if r.get("graph_ms") is None else f" / {r['graph_ms']:.3f}"
                cells.append(f"{r['ms']:.3f}{gpu}{graph}{mem}")
        lines.append(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + " |")
    dev = torch.cuda.get_device_name() if ON_GPU else "cpu"
    note = (f"\n\nDevice: {dev}; dtype {str(DTYPE).replace('torch.', '')}; torch {torch.__version__}; "
            f"median ms per step: wall clock of a synchronised step (host + GPU) / GPU stream time from CUDA "
            f"events over back-to-back steps / GPU time of the step replayed from a CUDA graph (no host "
            f"overhead; the last two on a GPU only); peak memory above inputs, MiB; n/a: contender cannot "
            f"run these inputs.\n")
    try:
        import triton

        note = note.replace("; median", f"; triton {triton.__version__}; median")
    except Exception:
        pass
    return "\n".join(lines) + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", default="cross_frame_attn,intra_frame_attn,prompt_cross_attn")
    ap.add_argument("--out", default=None, help="write the Markdown table here (default: stdout)")
    ap.add_argument("--json", default=None, help="write the raw rows here")
    ap.add_argument("--from-pytest-json", default=None, help="only format a pytest-benchmark JSON file")
    a = ap.parse_args(argv)
    rows = rows_from_pytest_json(a.from_pytest_json) if a.from_pytest_json else run_all(a.ops.split(","))
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    text = table(rows)
    if a.out:
        open(a.out, "w").write(text)
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
