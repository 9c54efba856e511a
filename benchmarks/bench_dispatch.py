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
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import xclip_kernels as xk

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
            times = {k: [] for k in fns}
            for f in fns.values():
                for _ in range(20):
                    f()
            for _ in range(rounds):
                for k, f in fns.items():
                    t0 = clock()
                    for _ in range(iters):
                        f()
                    times[k].append((clock() - t0) / iters * 1e6)
            row = dict(op=name, mode=mode)
            for k in fns:
                row[f"{k}_min_us"] = min(times[k])
                row[f"{k}_median_us"] = statistics.median(times[k])
            row["overhead_min_us"] = row["op_min_us"] - row["plain_min_us"]
            row["overhead_median_us"] = row["op_median_us"] - row["plain_median_us"]
            rows.append(row)
    return rows


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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--wall", action="store_true", help="wall clock instead of the thread's CPU time")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args.rounds, args.iters, time.perf_counter if args.wall else time.thread_time)
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
