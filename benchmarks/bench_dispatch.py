"""Host overhead of calling the fused ops (a benchmark, not a test).

Each op runs on tiny CPU tensors through the ``torch`` backend, against the
same math written as plain torch ops in the same run: PyTorch's
``scaled_dot_product_attention`` on the same views (messages concatenated,
a shared query expanded), which runs the same CPU flash kernel as the torch
backend. The difference per call is what the op frame costs on the host:
validation, backend choice, custom-op / autograd plumbing.

Modes:
- ``fwd``: forward under ``torch.no_grad()``;
- ``fwd+bwd``: forward with inputs that require grad, then
  ``torch.autograd.grad`` of a fixed output gradient (both sides pay the
  autograd engine).

Timing: one thread (``torch.set_num_threads(1)``), so all the work of a call
is on the calling thread, timed with that thread's CPU clock
(``time.thread_time``; ``--wall`` for wall clock): time the thread spends
descheduled on a loaded machine does not count. Contenders are interleaved
round by round; per call the minimum and the median over rounds.

    python benchmarks/bench_dispatch.py [--rounds 30] [--iters 200] [--markdown]

``--cpu-kernels`` instead times the torch backend's CPU kernels at
xclip-base-patch32 sizes (float32): the explicit eager definitions it used
before (``reference.X_fwd/_bwd``: float32 copies, concatenated message keys,
matmuls) against the CPU flash-attention path it uses now
(``reference.cpu_X_fwd/_bwd``), and for the intra-frame forward a variant
that never concatenates the message keys (a second softmax term merged into
the output).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import xclip_kernels as xk

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _ratio import interleaved_times  # noqa: E402

SCALE = 0.25  # = 16 ** -0.5


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=SCALE).transpose(1, 2)


def cases():
    """(name, op call, plain-torch call, inputs) per op; tiny shapes, float32."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    B, T, N, M, K, H, D = 2, 5, 9, 1, 5, 2, 16
    qkv = r(B, T, 3, H, D)
    fqkv, kvm = r(B, N, 3, H, D), r(B, M, 2, H, D)
    pq, pkv = r(K, H, D), r(B, N, 2, H, D)
    return [
        ("cross_frame_attn", lambda q, k, v: xk.cross_frame_attn(q, k, v, backend="torch"), _sdpa, qkv.unbind(2)),
        ("cross_frame_attn_packed", lambda p: xk.cross_frame_attn_packed(p, backend="torch"),
         lambda p: _sdpa(*p.unbind(2)), (qkv,)),
        ("intra_frame_attn", lambda q, k, v, km, vm: xk.intra_frame_attn(q, k, v, km, vm, backend="torch"),
         lambda q, k, v, km, vm: _sdpa(q, torch.cat([k, km], 1), torch.cat([v, vm], 1)),
         fqkv.unbind(2) + kvm.unbind(2)),
        ("intra_frame_attn_packed", lambda p, m: xk.intra_frame_attn_packed(p, m, backend="torch"),
         lambda p, m: _sdpa(p[:, :, 0], torch.cat([p[:, :, 1], m[:, :, 0]], 1), torch.cat([p[:, :, 2], m[:, :, 1]], 1)),
         (fqkv, kvm)),
        ("prompt_cross_attn", lambda q, k, v: xk.prompt_cross_attn(q, k, v, backend="torch"),
         lambda q, k, v: _sdpa(q.expand(k.shape[0], *q.shape), k, v), (pq, *pkv.unbind(2))),
    ]


def _runner(fn, inputs, mode):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(*inputs)
        return run
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    do = torch.randn(fn(*leaves).shape)

    def run():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, do)
    return run


def measure(rounds: int, iters: int, clock=time.thread_time) -> list[dict]:
    rows = []
    for name, op, plain, inputs in cases():
        # same results first: the two sides compute the same thing
        with torch.no_grad():
            torch.testing.assert_close(op(*inputs), plain(*inputs), rtol=1e-5, atol=1e-5)
        for mode in ("fwd", "fwd+bwd"):
            fns = {"op": _runner(op, inputs, mode), "plain": _runner(plain, inputs, mode)}
            times = {k: [t * 1e6 for t in v]
                     for k, v in interleaved_times(fns, rounds, warmup=max(1, 20 // iters), clock=clock, iters=iters).items()}
            row = dict(op=name, mode=mode)
            for k in fns:
                row[f"{k}_min_us"] = min(times[k])
                row[f"{k}_median_us"] = statistics.median(times[k])
            row["overhead_min_us"] = row["op_min_us"] - row["plain_min_us"]
            row["overhead_median_us"] = row["op_median_us"] - row["plain_median_us"]
            rows.append(row)
    return rows


# --- the torch backend's CPU kernels at xclip-base-patch32 sizes --------------------


def _intra_fwd_merged(q, k, v, k_msg, v_msg, scale):
    """Intra-frame forward without the concatenation: flash attention over the N patch keys,
    then the M message keys merged in through their log-sum-exp."""
    from xclip_kernels.reference import _flash_cpu, _heads

    o1, lse1 = _flash_cpu(_heads(q), _heads(k), _heads(v), scale=scale)
    s = torch.matmul(_heads(q), _heads(k_msg).transpose(-1, -2)) * scale  # [F, H, N, M]
    lse = torch.logaddexp(lse1, torch.logsumexp(s, -1))
    p = torch.exp(s - lse.unsqueeze(-1))
    o = torch.addcmul(torch.matmul(p, _heads(v_msg)), o1, torch.exp(lse1 - lse).unsqueeze(-1))
    return o.transpose(1, 2), lse


def cpu_kernel_cases():
    from xclip_kernels import reference as R

    g = torch.Generator().manual_seed(0)
    H, D, s = 12, 64, 64**-0.5
    F_, N, M = 16, 50, 1  # 2 videos x 8 frames, 7x7 patches + class token, one message
    B, T = 2, 8
    K, Np, Hp = 400, 49, 8  # prompt: 400 class texts over the 49 patch tokens, 8 heads
    fqkv = torch.randn(F_, N, 3, H, D, generator=g).unbind(2)
    fm = torch.randn(F_, M, 2, H, D, generator=g).unbind(2)
    cqkv = torch.randn(B, T, 3, H, D, generator=g).unbind(2)
    pq = torch.randn(K, Hp, D, generator=g)
    pkv = torch.randn(B, Np, 2, Hp, D, generator=g).unbind(2)
    return [
        ("intra_frame_attn F=16 N=50 M=1 H=12 D=64", "intra_frame_attn", (*fqkv, *fm), s),
        ("cross_frame_attn B=2 T=8 H=12 D=64", "cross_frame_attn", cqkv, s),
        ("prompt_cross_attn B=2 K=400 (shared) N=49 H=8 D=64", "prompt_cross_attn", (pq, *pkv), s),
    ], R


def measure_cpu_kernels(rounds: int, iters: int, clock=time.thread_time) -> list[dict]:
    cases, R = cpu_kernel_cases()
    rows = []
    for label, op, t, s in cases:
        fwd_old, bwd_old = getattr(R, f"{op}_fwd"), getattr(R, f"{op}_bwd")
        fwd_new, bwd_new = getattr(R, f"cpu_{op}_fwd"), getattr(R, f"cpu_{op}_bwd")
        o, lse = fwd_old(*t, s)
        do = torch.randn(o.shape, generator=torch.Generator().manual_seed(1))
        o2, lse2 = fwd_new(*t, s)
        torch.testing.assert_close(o2, o, rtol=1e-4, atol=1e-5)
        fns = {
            ("fwd", "explicit (old)"): lambda: fwd_old(*t, s),
            ("fwd", "CPU flash (new)"): lambda: fwd_new(*t, s),
            ("fwd+bwd", "explicit (old)"): lambda: bwd_old(do, *t, *fwd_old(*t, s), s),
            ("fwd+bwd", "CPU flash (new)"): lambda: bwd_new(do, *t, *fwd_new(*t, s), s),
        }
        if op == "intra_frame_attn":
            torch.testing.assert_close(_intra_fwd_merged(*t, s)[0], o, rtol=1e-4, atol=1e-5)
            fns[("fwd", "CPU flash, messages merged (no cat)")] = lambda: _intra_fwd_merged(*t, s)
        times = {k: [t * 1e3 for t in v] for k, v in interleaved_times(fns, rounds, clock=clock, iters=iters).items()}
        for (mode, path), v in times.items():
            rows.append(dict(case=label, mode=mode, path=path, min_ms=min(v), median_ms=statistics.median(v)))
    return rows


def markdown_cpu_kernels(rows: list[dict]) -> str:
    lines = ["| op, sizes (float32) | mode | path | ms (min / median) | vs old (min) |", "|---|---|---|---|---|"]
    old = {(r["case"], r["mode"]): r["min_ms"] for r in rows if r["path"] == "explicit (old)"}
    for r in rows:
        lines.append(f"| {r['case']} | {r['mode']} | {r['path']} | {r['min_ms']:.3f} / {r['median_ms']:.3f} | "
                     f"{old[(r['case'], r['mode'])] / r['min_ms']:.2f}x |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    lines = [
        "| op | mode | op (us, min / median) | plain torch (us, min / median) | overhead (us, min / median) | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        target = 30 if r["mode"] == "fwd" else 80
        lines.append(
            f"| {r['op']} | {r['mode']} | {r['op_min_us']:.1f} / {r['op_median_us']:.1f} | "
            f"{r['plain_min_us']:.1f} / {r['plain_median_us']:.1f} | "
            f"{r['overhead_min_us']:.1f} / {r['overhead_median_us']:.1f} | <= {target} |"
        )
    return "\n".join(lines)


def test_bench_dispatch_runs():
    """Smoke test (pytest collects bench_*.py): both benchmarks run and their two sides agree. No timing."""
    rows = measure(rounds=1, iters=1)
    assert len(rows) == 2 * len(cases())
    assert len(measure_cpu_kernels(rounds=1, iters=1)) == 13
    assert markdown(rows).count("\n") == len(rows) + 1  # the table renders


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall clock instead of the thread's CPU time")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    ap.add_argument("--cpu-kernels", action="store_true",
                    help="time the torch backend's CPU kernels (old explicit vs CPU flash) at xclip-base-patch32 sizes")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.thread_time
    if args.cpu_kernels:
        print(markdown_cpu_kernels(measure_cpu_kernels(args.rounds, max(1, args.iters // 20), clock)))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
              f"{'wall clock' if args.wall else 'thread CPU time'}")
        return
    rows = measure(args.rounds, args.iters, clock)
    if args.markdown:
        print(markdown(rows))
    else:
        for r in rows:
            print(f"{r['op']:26s} {r['mode']:8s} op {r['op_min_us']:7.1f} us  plain {r['plain_min_us']:7.1f} us  "
                  f"overhead {r['overhead_min_us']:6.1f} us (median {r['overhead_median_us']:6.1f})")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{'wall clock' if args.wall else 'thread CPU time'}")


if __name__ == "__main__":
    main()
