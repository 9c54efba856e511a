"""In-run baselines for pytest-benchmark: ratios that survive a loaded machine.

``record(benchmark, fn, baseline, "sdpa", rounds=..., reps=...)`` times ``fn``
with pytest-benchmark and stores, in ``benchmark.extra_info``,
``ratio_vs_<name>`` = min(fn) / min(baseline) over ``reps`` calls each, the
calls interleaved (fn, baseline, fn, baseline, ...) so that load from other
jobs hits both alike, and ``ratio_vs_<name>_median`` (the same with medians).
On the CPU the clock is the process's CPU time (``time.process_time``: all
threads, not the time spent waiting for a core), on a GPU wall time after a
synchronise. The minimum is the ratio of record: load only ever adds time, so
the fastest of N calls is the estimate of a call's own cost that moves least
between runs on a shared machine. On the loaded 2-core box, back-to-back runs
differed by up to 20x in wall-clock median ratios and up to 4x in wall-clock
minimum ratios (benchmarks/RESULTS.md, "Regression runs"). ``benchmarks/regress.py`` judges regressions on
these ratios. With ``--benchmark-disable`` it runs ``fn`` once and measures
nothing.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                      clock: Callable[[], float] = time.process_time, iters: int = 1) -> dict[str, list[float]]:
    """Seconds per call (by ``clock``) of each function over ``reps`` rounds, the functions alternating.

    Each round times ``iters`` back-to-back calls of one function and records their mean (``iters`` > 1 for
    calls too short for the clock); ``warmup`` untimed rounds of ``iters`` calls each come first.
    """
    for _ in range(warmup):
        for f in fns.values():
            for _ in range(iters):
                f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = clock()
            for _ in range(iters):
                f()
            times[k].append((clock() - t0) / iters)
    return times


def record(benchmark, fn: Callable[[], object], baseline: Callable[[], object], name: str, rounds: int, reps: int,
           cuda: bool = False, **info) -> None:
    """Time ``fn`` (pytest-benchmark) and store ``ratio_vs_<name>`` against ``baseline`` in extra_info.

    ``cuda=True``: wall-clock ratios; ``fn`` and ``baseline`` must then synchronise the device themselves.
    """
    benchmark.extra_info.update(info)
    if benchmark.disabled:
        benchmark(fn)
        return
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    t = interleaved_times({"x": fn, "base": baseline}, reps, clock=time.perf_counter if cuda else time.process_time)
    x_min, b_min = min(t["x"]), min(t["base"])
    x_med, b_med = statistics.median(t["x"]), statistics.median(t["base"])
    benchmark.extra_info.update({f"ratio_vs_{name}": x_min / b_min, f"ratio_vs_{name}_median": x_med / b_med,
                                 "baseline": name, "reps": reps, "ratio_clock": "wall" if cuda else "cpu", "min_s": x_min, "baseline_min_s": b_min,
                                 "median_s": x_med, "baseline_median_s": b_med})
