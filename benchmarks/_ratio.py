"""In-run baselines for pytest-benchmark: ratios that survive a loaded machine.

``record(benchmark, fn, baseline, "sdpa", rounds=..., reps=...)`` times ``fn``
with pytest-benchmark and stores, in ``benchmark.extra_info``,
``ratio_vs_<name>`` = min(fn) / min(baseline) over ``reps`` calls each, the
calls interleaved (fn, baseline, fn, baseline, ...) so that load from other
jobs hits both alike, and ``ratio_vs_<name>_median`` (the same with medians).
The minimum is the ratio of record: load only ever adds time, so the fastest
of N calls is the estimate of a call's own cost that moves least between
runs on a shared machine (two back-to-back runs on the loaded 2-core box
differed by up to 20x in median-based ratios; see benchmarks/RESULTS.md). ``benchmarks/regress.py`` judges regressions on
these ratios. With ``--benchmark-disable`` it runs ``fn`` once and measures
nothing.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function over ``reps`` calls, the calls alternating so load hits all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return times


def record(benchmark, fn: Callable[[], object], baseline: Callable[[], object], name: str, rounds: int, reps: int,
           **info) -> None:
    """Time ``fn`` (pytest-benchmark) and store ``ratio_vs_<name>`` against ``baseline`` in extra_info.

    ``fn`` and ``baseline`` must synchronise the device themselves (CUDA).
    """
    benchmark.extra_info.update(info)
    if benchmark.disabled:
        benchmark(fn)
        return
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1, iterations=1)
    t = interleaved_times({"x": fn, "base": baseline}, reps)
    x_min, b_min = min(t["x"]), min(t["base"])
    x_med, b_med = statistics.median(t["x"]), statistics.median(t["base"])
    benchmark.extra_info.update({f"ratio_vs_{name}": x_min / b_min, f"ratio_vs_{name}_median": x_med / b_med,
                                 "baseline": name, "reps": reps, "min_s": x_min, "baseline_min_s": b_min,
                                 "median_s": x_med, "baseline_median_s": b_med})
