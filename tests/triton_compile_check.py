"""Compile every Triton kernel of xclip_kernels.triton for a CUDA target, no GPU needed.

The interpreter tests run the kernels' logic; this catches what only the real
compiler sees (constexpr misuse, dot-shape limits, shared-memory layouts).
Each op's forward and backward wrappers are called with a fake ``launch``
that records every kernel launch (arguments, constexprs, autotune configs);
each recorded launch is then compiled with ``triton.compile`` for
``GPUTarget("cuda", ARCH, 32)`` through Triton's bundled ptxas.

    python tests/triton_compile_check.py [ARCH=90] [all|first]

Must run WITHOUT TRITON_INTERPRET (the interpreter swaps the kernels for
Python functions). Exit status 1 if any kernel fails to compile.
"""

from __future__ import annotations

import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from xclip_kernels.triton import _common as C  # noqa: E402
from xclip_kernels.triton import cross_frame_attn as CF  # noqa: E402
from xclip_kernels.triton import intra_frame_attn as IF  # noqa: E402
from xclip_kernels.triton import prompt_cross_attn as PC  # noqa: E402


def record_launches(arch: int, dtypes) -> list:
    calls = []
    C._gpu_arch = lambda: "hopper" if arch >= 90 else "ampere"
    C.interpreting = lambda: False

    def fake_launch(kernel, grid, args, fixed, configs, interp, key, tag):
        calls.append((kernel, args, fixed, configs or [{}], tag))

    class FakeKernel:
        def __init__(self, k):
            self.k = k

        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((self.k, a, kw, [{}], "delta"))

    C.launch = fake_launch
    C.attn_bwd_delta_kernel = FakeKernel(C.attn_bwd_delta_kernel)
    for dt in dtypes:
        z = lambda *s, d=dt: torch.zeros(*s, dtype=d)  # noqa: E731
        q, km, lse = z(4, 8, 2, 64), z(4, 1, 2, 64), z(4, 2, 8, d=torch.float32)
        CF.forward(q, q, q, 0.1)
        CF.backward(q, q, q, q, q, lse, 0.1)
        q2, lse2 = z(2, 80, 2, 64), z(2, 2, 80, d=torch.float32)
        CF.forward(q2, q2, q2, 0.1)
        CF.backward(q2, q2, q2, q2, q2, lse2, 0.1)
        IF.forward(q, q, q, km, km, 0.1)
        IF.backward(q, q, q, q, km, km, q, lse, 0.1)
        qs = z(8, 2, 64)
        PC.forward(qs, q, q, 0.1)
        PC.backward(q, qs, q, q, q, lse, 0.1)
        PC.backward(q, q, q, q, q, lse, 0.1)
    return calls


def _type(x) -> str:
    if isinstance(x, torch.Tensor):
        return "*" + {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[x.dtype]
    if isinstance(x, bool):
        return "i1"
    if isinstance(x, int):
        return "i32"
    if isinstance(x, float):
        return "fp32"
    raise TypeError(type(x))


def main(argv) -> int:
    arch = int(argv[1]) if len(argv) > 1 else 90
    every = len(argv) > 2 and argv[2] == "all"
    calls = record_launches(arch, (torch.bfloat16,) if not every else (torch.bfloat16, torch.float16, torch.float32))
    seen, failures, n, t0 = set(), 0, 0, time.time()
    for fn, args, fixed, configs, tag in calls:
        for cfg in configs if every else configs[:1]:
            meta = {**fixed, **{k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}}
            sig, cons, it = {}, {}, iter(args)
            for name in fn.arg_names:
                if name in meta:
                    sig[name], cons[name] = "constexpr", meta[name]
                else:
                    sig[name] = _type(next(it))
            opts = dict(num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 2))
            key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted(map(str, cons.items()))), tuple(opts.items()))
            if key in seen:
                continue
            seen.add(key)
            short = {k: v for k, v in cons.items() if k in ("G", "BM", "BN", "BMSG", "BD", "TP", "PREC")}
            try:
                ck = triton.compile(ASTSource(fn, sig, cons), target=GPUTarget("cuda", arch, 32), options=opts)
                n += 1
                print(f"ok   sm_{arch} {tag} {fn.__name__} {short} {opts} smem={ck.metadata.shared}", flush=True)
            except Exception as e:  # report every failure, then fail
                failures += 1
                print(f"FAIL sm_{arch} {tag} {fn.__name__} {short} {opts}: {type(e).__name__}: {str(e)[:2000]}", flush=True)
    print(f"compiled {n}, failed {failures}, {time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
