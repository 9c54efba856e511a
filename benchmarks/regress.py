"""Benchmark regression run: this machine's benchmarks against its last saved run.

    python benchmarks/regress.py [--threshold 15] [--judge ratio|median|both] [--gpu auto|yes|no] [-- PYTEST ARGS]

1. Runs pytest-benchmark on the CPU-meaningful set (``benchmarks/bench_cpu_regress.py``:
   op host overhead, CPU model inference, data pipeline) and, when a CUDA GPU is
   present, the GPU set (``bench_*_attn.py`` at X-CLIP shapes and ``bench_model.py``),
   with ``--benchmark-enable --benchmark-autosave`` (and, without a GPU,
   ``--benchmark-timer=time.process_time``: CPU time, not waiting for a core) into
   ``.benchmarks/<machine>/`` (``<machine>``: CPU model, core count and GPU name, so
   runs of different machines never meet) and, when an earlier run of this machine is
   stored there, ``--benchmark-compare`` (pytest-benchmark's table against the last
   run).
2. Compares the new run with the previous one, benchmark by benchmark: the median
   time and the ratio against the in-run baseline (``extra_info["ratio_vs_*"]``:
   SDPA, the plain model, transformers, PyAV decoding). ``--judge ratio`` (default)
   fails on a ratio that grew by more than ``--threshold`` percent: ratios survive a
   loaded machine, absolute times do not. ``--judge median`` fails on medians
   (pytest-benchmark's ``--benchmark-compare-fail=median:<threshold>%``), ``both`` on
   either.

Exit status: 0 no regression (or first run: nothing to compare), 1 regression,
2 pytest failed. Writes the comparison as Markdown to ``--report`` when given.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU_SET = ["benchmarks/bench_cpu_regress.py"]
GPU_SET = ["benchmarks/bench_cross_frame_attn.py", "benchmarks/bench_intra_frame_attn.py",
           "benchmarks/bench_prompt_cross_attn.py", "benchmarks/bench_model.py"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_id(gpu: bool) -> str:
    parts = [_cpu_model(), f"{os.cpu_count()}c"]
    if gpu:
        import torch

        parts.append(torch.cuda.get_device_name(0))
    return re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(parts)).strip("-")[:120]


def saved_runs(storage: str) -> list[str]:
    """Saved pytest-benchmark JSON files under ``storage``, oldest first (their names start with a counter)."""
    files = glob.glob(os.path.join(storage, "*", "*.json"))
    return sorted(files, key=lambda p: (os.path.basename(p).split("_", 1)[0], os.path.getmtime(p)))


def _load(path: str) -> dict[str, dict]:
    with open(path) as f:
        data = json.load(f)
    return {b["fullname"]: b for b in data["benchmarks"]}


def _ratio(b: dict) -> tuple[str, float] | None:
    for k, v in b.get("extra_info", {}).items():
        if k.startswith("ratio_vs_") and not k.endswith("_median") and isinstance(v, (int, float)):
            return k[len("ratio_vs_"):], float(v)
    return None


def compare(old_path: str, new_path: str, threshold: float, judge: str) -> tuple[list[str], int]:
    """Markdown rows comparing two runs, and the number of regressions under ``judge``."""
    old, new = _load(old_path), _load(new_path)
    rows = ["| benchmark | median old -> new | change | ratio vs baseline old -> new | change | verdict |",
            "|---|---|---|---|---|---|"]
    bad = 0
    lim = 1 + threshold / 100
    for name, b in new.items():
        short = name.split("::", 1)[-1]
        if name not in old:
            rows.append(f"| {short} | new | | | | new |")
            continue
        o = old[name]
        m_old, m_new = o["stats"]["median"], b["stats"]["median"]
        m_change = m_new / m_old
        r_old, r_new = _ratio(o), _ratio(b)
        verdict = []
        if judge in ("median", "both") and m_change > lim:
            verdict.append("slower (median)")
        r_txt, r_chg = "", ""
        if r_old and r_new and r_old[0] == r_new[0]:
            r_change = r_new[1] / r_old[1]
            r_txt = f"{r_old[1]:.3f} -> {r_new[1]:.3f} (vs {r_new[0]})"
            r_chg = f"{(r_change - 1) * 100:+.1f}%"
            if judge in ("ratio", "both") and r_change > lim:
                verdict.append("slower (ratio)")
        bad += bool(verdict)
        rows.append(f"| {short} | {m_old * 1e3:.3f} -> {m_new * 1e3:.3f} ms | {(m_change - 1) * 100:+.1f}% | {r_txt} | "
                    f"{r_chg} | {', '.join(verdict) or 'ok'} |")
    return rows, bad


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/regress.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--threshold", type=float, default=15.0, help="percent slower that counts as a regression")
    ap.add_argument("--judge", choices=["ratio", "median", "both"], default="ratio")
    ap.add_argument("--gpu", choices=["auto", "yes", "no"], default="auto")
    ap.add_argument("--storage", default=None, help="default: .benchmarks/<machine>")
    ap.add_argument("--report", default=None, help="write the comparison (Markdown) here")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    if args.threshold <= 0:
        ap.error(f"--threshold must be > 0, got {args.threshold}")

    import torch

    gpu = torch.cuda.is_available() if args.gpu == "auto" else args.gpu == "yes"
    if gpu and not torch.cuda.is_available():
        ap.error("--gpu yes: no CUDA GPU visible")
    storage = os.path.abspath(args.storage or os.path.join(REPO, ".benchmarks", machine_id(gpu)))
    before = saved_runs(storage)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CPU_SET, *(GPU_SET if gpu else []),
           "--benchmark-enable", "--benchmark-autosave", f"--benchmark-storage=file://{storage}",
           "--benchmark-columns=median,iqr,rounds", "--benchmark-sort=fullname"]
    if not gpu:  # CPU only: time the process's CPU time, not the wait for a core on a shared machine
        cmd.append("--benchmark-timer=time.process_time")
    if before:
        cmd.append("--benchmark-compare")
        if args.judge in ("median", "both"):
            cmd.append(f"--benchmark-compare-fail=median:{args.threshold:g}%")
    cmd += args.pytest_args
    print(f"[regress] machine {os.path.basename(storage)}; {'GPU + CPU' if gpu else 'CPU'} set; "
          f"{len(before)} earlier run(s) stored", flush=True)
    print("[regress] " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=REPO)
    after = saved_runs(storage)
    new = [p for p in after if p not in before]
    if not new:
        print(f"[regress] pytest exited {rc} and saved no run", file=sys.stderr)
        return 2
    if not before:
        print(f"[regress] first run on this machine, saved {os.path.relpath(new[-1], REPO)}; nothing to compare yet")
        return 0 if rc == 0 else 2
    rows, bad = compare(before[-1], new[-1], args.threshold, args.judge)
    head = (f"Regression check ({args.judge}, threshold {args.threshold:g}%): "
            f"{os.path.basename(new[-1])} against {os.path.basename(before[-1])}: "
            f"{bad} regression(s) in {len(rows) - 2} benchmarks")
    print("\n" + head + "\n" + "\n".join(rows))
    if args.report:
        with open(args.report, "w") as f:
            f.write(head + "\n\n" + "\n".join(rows) + "\n")
    if rc not in (0, 1) or (rc == 1 and args.judge == "ratio"):
        # rc 1 with judge=ratio: a test failed (not a median comparison, which is not requested)
        print(f"[regress] pytest exited {rc}", file=sys.stderr)
        return 2
    return 1 if (bad or rc == 1) else 0


if __name__ == "__main__":
    raise SystemExit(main())
