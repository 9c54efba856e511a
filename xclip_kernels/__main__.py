"""Self-check: ``python -m xclip_kernels``.

Prints which backends are usable here (and why not), then runs each op on
each usable backend against a float64 computation and prints a pass/fail
table (forward and gradients). Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch

import xclip_kernels as xk
from xclip_kernels import reference

SIZES = {
    "cross_frame_attn": dict(B=3, T=8, H=2, D=64),
    "intra_frame_attn": dict(F=4, N=17, M=1, H=2, D=64),
    "prompt_cross_attn": dict(B=2, K=9, N=17, H=2, D=64),
}
TOL = {torch.float32: 2e-4, torch.float16: 2e-2, torch.bfloat16: 6e-2}


def _inputs(op, dtype, device, gen):
    s = SIZES[op]

    def r(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device).requires_grad_(True)

    if op == "cross_frame_attn":
        return [r(s["B"], s["T"], s["H"], s["D"]) for _ in range(3)]
    if op == "intra_frame_attn":
        return [r(s["F"], s["N"], s["H"], s["D"]) for _ in range(3)] + [r(s["F"], s["M"], s["H"], s["D"]) for _ in range(2)]
    return [r(s["K"], s["H"], s["D"]), r(s["B"], s["N"], s["H"], s["D"]), r(s["B"], s["N"], s["H"], s["D"])]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def check(op, backend, dtype, device) -> tuple[bool, float, str]:
    gen = torch.Generator().manual_seed(0)
    tensors = _inputs(op, dtype, device, gen)
    try:
        out = getattr(xk, op)(*tensors, backend=backend)
        do = torch.randn(out.shape, generator=gen).to(dtype).to(device)
        grads = torch.autograd.grad(out, tensors, do)
    except Exception as e:  # report, do not crash the table
        return False, math.inf, f"{type(e).__name__}: {e}"[:120]
    t64 = [t.detach().double().cpu().requires_grad_(True) for t in tensors]
    ref = getattr(reference, op)(*t64)
    ref_grads = torch.autograd.grad(ref, t64, do.double().cpu())
    err = max([_rel_err(out, ref)] + [_rel_err(g, rg) for g, rg in zip(grads, ref_grads)])
    return err <= TOL[dtype], err, ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xclip_kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default=None, help="comma list of float32,float16,bfloat16 (default: by device)")
    args = ap.parse_args(argv)

    print(f"xclip_kernels {xk.__version__}  torch {torch.__version__}  CUDA device: "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    info = xk.build_info()
    ext = "built" if info.get("cuda_extension") else "not built"
    print(f"CUDA extension: {ext} {'(' + info['extension_error'] + ')' if info.get('extension_error') else ''}")
    print("\nBackends:")
    status = xk.available_backends()
    for st in status.values():
        print(f"  {st.name:<7} {'yes' if st.available else 'no ':<4} {st.reason}")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtypes:
        dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    elif device == "cuda":
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
    else:
        dtypes = [torch.float32]
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    print(f"\nChecks against float64 (forward + all gradients, max relative error), device {device}:")
    print(f"  {'op':<19} {'backend':<8} {'dtype':<9} {'result':<6} max rel err")
    failed = 0
    for op in SIZES:
        for name, st in status.items():
            if not st.available:
                continue
            for dtype in dtypes:
                if name == "triton" and device == "cpu" and (not interp or dtype == torch.bfloat16):
                    continue
                ok, err, note = check(op, name, dtype, device)
                failed += not ok
                dn = str(dtype).replace("torch.", "")
                print(f"  {op:<19} {name:<8} {dn:<9} {'PASS' if ok else 'FAIL':<6} {err:.2e} {note}")
    print(f"\n{'all checks passed' if not failed else f'{failed} check(s) FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
