#!/usr/bin/env python
"""Curated mutation check: plant realistic bugs and prove the named tests catch each one.

Each mutant is (file, exact original snippet, replacement, tests that must catch it).
The script copies the repository (tracked and untracked-but-not-ignored files, plus
the compiled extension) into a temporary folder, then for each mutant replaces the
snippet in the copy, runs the named tests there (``PYTHONPATH`` = the copy, working
directory = the copy, so subprocesses the tests start run the mutated code too),
and restores the file. The live tree is never written.

A mutant is *caught* when every named test fails (at least one case of a
parametrised test, or of a test file named as a whole). The script exits non-zero when

* a mutant survives (its tests pass with the bug in place): strengthen the test;
* a snippet no longer occurs exactly once in its file (the code moved on: re-point
  the mutant, so the check cannot rot silently);
* the named tests do not pass on the unmutated copy (``--no-baseline`` skips this),
  or a test id does not exist (pytest collects nothing).

Usage::

    python scripts/mutation_check.py                 # all mutants
    python scripts/mutation_check.py -k heads -k eot # those whose name contains a word
    python scripts/mutation_check.py --list          # the mutants and their tests
    python scripts/mutation_check.py --check-only    # only that every snippet still matches (seconds)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    tests: tuple[str, ...]  # pytest node ids (relative to the repository root)
    what: str  # the bug, in words
    k: str | None = None  # optional pytest -k expression narrowing the tests (to keep the check fast)


T_OFFICIAL = "tests/model/test_model.py::test_matches_official_computation_float64"

MUTANTS: list[Mutant] = [
    Mutant(
        "heads-selfattn", "xclip/model/model.py",
        ".view(B, L, 3, self.num_heads, E // self.num_heads)",
        ".view(B, L, 3, E // self.num_heads, self.num_heads).transpose(-1, -2)",
        (T_OFFICIAL,),
        "text-tower SelfAttention splits the width into heads as [D, H] instead of [H, D]"),
    Mutant(
        "heads-prompt", "xclip/model/model.py",
        "q = self.q_proj(query).unflatten(-1, (H, D))",
        "q = self.q_proj(query).unflatten(-1, (D, H)).transpose(-1, -2)",
        (T_OFFICIAL,),
        "PromptAttention splits the query into heads as [D, H] instead of [H, D]"),
    Mutant(
        "heads-crossframe", "xclip_kernels/nn.py",
        "qkv = self._project(x, 0, 3)  # [B, T, 3, H, D]",
        "qkv = self._project(x, 0, 3).flatten(-2).unflatten(-1, (self.head_dim, self.num_heads)).transpose(-1, -2)  #",
        (T_OFFICIAL, "tests/kernels/test_nn.py::test_cross_frame_attention_equals_mha"),
        "CrossFrameAttention (message attention, MIT) splits q/k/v into heads as [D, H]"),
    Mutant(
        "heads-intraframe", "xclip_kernels/nn.py",
        "o = intra_frame_attn_packed(self._project(x, 0, 3), ",
        "o = intra_frame_attn_packed(self._project(x, 0, 3).flatten(-2).unflatten(-1, (self.head_dim, self.num_heads))"
        ".transpose(-1, -2), ",
        (T_OFFICIAL, "tests/kernels/test_nn.py::test_intra_frame_attention_equals_mha_over_concat"),
        "IntraFrameAttention (vision blocks) splits the token q/k/v into heads as [D, H]"),
    Mutant(
        "triton-scale-log2", "xclip_kernels/triton/_common.py",
        "qk_scale = scale * 1.4426950408889634\n    m_i = tl.full",
        "qk_scale = scale\n    m_i = tl.full",
        ("tests/kernels/test_triton_kernels.py::test_kernels_against_float64",),
        "Triton forward kernel: exp2 softmax without the log2(e) factor in the scale", k="fp32"),
    Mutant(
        "triton-msg-last-key", "xclip_kernels/triton/_common.py",
        "acc = tl.zeros([G * BM, BD], tl.float32)\n    L_all = Lk + M\n",
        "acc = tl.zeros([G * BM, BD], tl.float32)\n    L_all = Lk + M - 1\n",
        ("tests/kernels/test_triton_kernels.py::test_kernels_against_float64",),
        "Triton intra-frame forward: the last message key is dropped", k="fp32 and intra"),
    Mutant(
        "mit-residual-after-pos", "xclip/model/model.py",
        "ori = x\n        x = x + self.positional_embedding.to(x.dtype)",
        "x = x + self.positional_embedding.to(x.dtype)\n        ori = x",
        (T_OFFICIAL,),
        "MIT residual taken after the positional embedding is added"),
    Mutant(
        "prompt-alpha-ignored", "xclip/model/model.py",
        "return self.alpha * text",
        "return text",
        (T_OFFICIAL,),
        "video-specific prompts added without their alpha scale"),
    Mutant(
        "text-not-at-eot", "xclip/model/model.py",
        "return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection",
        "return x[torch.arange(x.shape[0], device=x.device), eot - 1] @ self.text_projection",
        (T_OFFICIAL, "tests/model/test_official_fixture.py"),
        "text feature taken one token before <eot>"),
    Mutant(
        "sampler-drops-last", "xclip/data/loader.py",
        "iter(range(self.rank, self.n, self.num_replicas))",
        "iter(range(self.rank, self.n - 1, self.num_replicas))",
        ("tests/data/test_data.py::test_shard_sampler_every_sample_once",),
        "evaluation ShardSampler drops the last sample"),
    Mutant(
        "scheduler-not-restored", "xclip/engine/trainer.py",
        'self.schedule.load_state_dict(state["scheduler"])',
        "pass  # scheduler state not restored",
        ("tests/engine/test_resume.py::test_kill_and_resume_matches_uninterrupted",),
        "resume restores the optimiser but not the learning-rate schedule"),
    Mutant(
        "grads-summed-across-ranks", "xclip/engine/trainer.py",
        "self.scaler.scale(loss / self.cfg.train.accumulation_steps).backward()",
        "self.scaler.scale(loss * self.dist.world_size / self.cfg.train.accumulation_steps).backward()",
        ("tests/engine/test_distributed.py::test_two_process_ddp_matches_single_process",),
        "gradients summed over ranks instead of averaged (DDP's mean times the world size)"),
    Mutant(
        "unreadable-video-raises", "xclip/data/dataset.py",
        "except Exception as e:  # any decode / transform failure: skip, never kill the run\n",
        "except Exception as e:  # any decode / transform failure: skip, never kill the run\n            raise\n",
        ("tests/engine/test_train_loop.py::test_corrupt_video_is_skipped_and_training_completes",),
        "an unreadable video raises out of the data set instead of being skipped"),
    Mutant(
        "demo-blind-input", "xclip/data/frame_cache.py",
        "            self._frames[path] = t\n        return t\n",
        "            self._frames[path] = t\n        return torch.zeros_like(t)  # blind: every frame black\n",
        ("tests/apps/test_demo.py::test_demo_learns_above_chance_and_above_blind",),
        "the demo's model sees black frames only (the frame cache serves zeros)"),
    Mutant(
        "drop-path-in-eval", "xclip/model/model.py",
        "if p == 0.0 or not training:",
        "if p == 0.0:",
        ("tests/model/test_model.py::test_drop_path_is_per_sample_and_off_in_eval",),
        "stochastic depth stays on in eval mode"),
]


# --------------------------------------------------------------------------- the copy

def _git_files(repo: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=repo,
                         check=True, capture_output=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _build_outputs(repo: str) -> list[str]:
    """The compiled extension and its recorded build info (gitignored, needed by the tests)."""
    d = os.path.join(repo, "xclip_kernels")
    return [os.path.join("xclip_kernels", f) for f in sorted(os.listdir(d))
            if (f.startswith("_C") and f.endswith((".so", ".pyd"))) or f == "_build_info.py"]


def make_copy(repo: str, dest: str) -> None:
    for rel in _git_files(repo) + _build_outputs(repo):
        src = os.path.join(repo, rel)
        if not os.path.isfile(src):  # deleted in the work tree but still in the index
            continue
        dst = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


def check_snippet(root: str, m: Mutant) -> str | None:
    """None when ``m.old`` occurs exactly once in its file, else why not."""
    path = os.path.join(root, m.file)
    if not os.path.isfile(path):
        return f"{m.file} does not exist"
    n = open(path, encoding="utf-8").read().count(m.old)
    if n != 1:
        return f"snippet occurs {n} times in {m.file} (expected exactly once): {m.old!r}"
    return None


def run_tests(root: str, tests: tuple[str, ...], timeout: float, k: str | None = None) -> tuple[int | None, float, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTEST_ADDOPTS", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # no stale .pyc of a mutated file can outlive its mutant
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", "-p", "no:randomly",
           "-W", "ignore::pytest.PytestUnknownMarkWarning", *(["-k", k] if k else []), *tests]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, time.time() - t0, out
    return p.returncode, time.time() - t0, p.stdout + p.stderr


def failed_ids(out: str) -> list[str]:
    """Node ids pytest's short summary (-rfE) lists as FAILED or ERROR."""
    ids = []
    for line in out.splitlines():
        for tag in ("FAILED ", "ERROR "):
            if line.startswith(tag):
                ids.append(line[len(tag):].split(" - ")[0].strip())
    return ids


def missed_by(tests: tuple[str, ...], failed: list[str]) -> list[str]:
    """The named tests none of whose cases failed."""
    return [t for t in tests if not any(f == t or f.startswith((t + "[", t + "::")) or t.startswith(f + "::")
                                       for f in failed)]  # (the last: a collection error of the whole file)


def _last_lines(text: str, n: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


# --------------------------------------------------------------------------- main

def print_table(rows: list[tuple[str, str, str, str]]) -> None:
    headers = ("mutant", "caught by (tests that must fail)", "result", "time")
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="mutation check")
        for h in headers:
            table.add_column(h, overflow="fold")
        for r in rows:
            style = "green" if r[2].startswith("caught") else "red"
            table.add_row(r[0], r[1], f"[{style}]{r[2]}[/{style}]", r[3])
        Console(width=160).print(table)
        return
    except ImportError:
        pass
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    fmt = " | ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*headers))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(fmt.format(*r))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", dest="select", action="append", default=[],
                   help="run only mutants whose name contains this word (repeatable)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--check-only", action="store_true", help="only check that every snippet still matches")
    p.add_argument("--no-baseline", action="store_true",
                   help="skip running the named tests on the unmutated copy first")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per test run (default 900)")
    p.add_argument("--repo", default=REPO, help="repository to copy (default: this script's)")
    p.add_argument("-v", "--verbose", action="store_true", help="print the tail of every test run")
    args = p.parse_args(argv)

    mutants = [m for m in MUTANTS if not args.select or any(s in m.name for s in args.select)]
    if not mutants:
        print(f"mutation_check: no mutant matches {args.select}; names: {[m.name for m in MUTANTS]}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.file}: {m.what}\n    tests: {', '.join(m.tests)}{f' -k {m.k!r}' if m.k else ''}")
        return 0

    stale = {m.name: why for m in mutants if (why := check_snippet(args.repo, m)) is not None}
    for name, why in stale.items():
        print(f"mutation_check: STALE mutant {name}: {why}", file=sys.stderr)
    if args.check_only:
        print(f"mutation_check: {len(mutants) - len(stale)} of {len(mutants)} snippets match")
        return 1 if stale else 0

    t_all = time.time()
    rows: list[tuple[str, str, str, str]] = []
    failed = bool(stale)
    with tempfile.TemporaryDirectory(prefix="xclip-mutants-") as root:
        make_copy(args.repo, root)
        if not args.no_baseline:
            live = [m for m in mutants if m.name not in stale]
            groups: dict[str | None, list[str]] = {}  # one pytest run per -k expression
            for m in live:
                groups.setdefault(m.k, []).extend(t for t in m.tests if t not in groups.get(m.k, []))
            for k, tests in groups.items():
                print(f"[baseline] {len(tests)} test ids{f' (-k {k})' if k else ''} on the unmutated copy ...", flush=True)
                rc, dt, out = run_tests(root, tuple(tests), args.timeout * 2, k)
                if rc != 0:
                    print(f"mutation_check: the named tests do not pass on the unmutated copy (rc {rc}, {dt:.0f} s); "
                          f"a 'caught' would mean nothing:\n{_last_lines(out, 30)}", file=sys.stderr)
                    return 1
                print(f"[baseline] passed in {dt:.0f} s", flush=True)
        for m in mutants:
            tests = ", ".join(t.replace("tests/", "") for t in m.tests) + (f" -k '{m.k}'" if m.k else "")
            if m.name in stale:
                rows.append((m.name, tests, "STALE snippet", "-"))
                continue
            path = os.path.join(root, m.file)
            original = open(path, encoding="utf-8").read()
            with open(path, "w", encoding="utf-8") as f:
                f.write(original.replace(m.old, m.new, 1))
            try:
                print(f"[{m.name}] {m.what} ...", flush=True)
                rc, dt, out = run_tests(root, m.tests, args.timeout, m.k)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original)
            missed = missed_by(m.tests, failed_ids(out))
            if rc is None:
                result = "TIMEOUT"
                failed = True
            elif rc == 0:
                result = "NOT caught"
                failed = True
            elif rc in (1, 2) and not missed:
                result = "caught" if rc == 1 else "caught (collection error)"
            elif rc in (1, 2):  # some named tests failed, others passed with the bug in place
                result = "NOT caught by " + ", ".join(t.replace("tests/", "") for t in missed)
                failed = True
            else:
                result = f"ERROR (pytest rc {rc})"
                failed = True
            print(f"[{m.name}] {result} in {dt:.0f} s", flush=True)
            if args.verbose or not result.startswith("caught"):
                print(_last_lines(out), flush=True)
            rows.append((m.name, tests, result, f"{dt:.0f} s"))
    print_table(rows)
    n_caught = sum(r[2].startswith("caught") for r in rows)
    print(f"{n_caught} of {len(rows)} mutants caught; wall time {time.time() - t_all:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
