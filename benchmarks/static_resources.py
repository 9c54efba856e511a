"""Static resource table of the Triton kernels: every kernel, every autotune config, no GPU needed.

Each op's forward and backward wrappers (``xclip_kernels.triton.<op>``) are
called on CPU tensors laid out as the model lays them out (views of packed
projections, X-CLIP sizes) with ``_common.launch`` replaced by a recorder.
Every recorded launch is then compiled, in every autotune config, for
``sm_80`` and ``sm_90`` with Triton's bundled ptxas and **the JIT's own
specialization**: the argument binder Triton builds for the kernel at run
time (``create_function_from_signature`` + ``JITFunction._pack_args``) sees
the same pointers, strides and sizes as the real launch, so divisibility-by-16
attributes and ints equal to 1 are specialised exactly as the JIT would
(16-byte aligned pointers: CUDA allocations are 256-byte aligned and the
CPU tensors used here are 64-byte aligned).

Per compiled kernel it records registers per thread and stack / local memory (Triton's bundled ``cuobjdump
-res-usage`` on the cubin) and spilled bytes (ptxas ``-v``, when it ran), shared memory, and the tensor-core instructions in the
PTX (``wgmma`` on sm_90, ``mma.sync`` on sm_80; none is expected for float32,
which uses IEEE dots). A config fails when it spills or needs more shared
memory than the arch allows (sm_80: 163 KiB, sm_90: 227 KiB per block).

    python -m benchmarks.static_resources --subset ci     # X-CLIP shapes, D = 64, bf16 (the suite's test)
    python -m benchmarks.static_resources --subset dims   # every kernel, bf16 + fp32, BD = 32 / 64 / 128 (slow test)
    python -m benchmarks.static_resources                 # everything: also fp16, D = 80 / 96, cross-frame T = 8..64
    ... --dtype fp32 --head-dim 128 --op cross_frame_attn  # one chunk (filters combine)
    ... --jobs 2 --write-results                          # parallel; replace this subset's table in RESULTS.md

Must run without TRITON_INTERPRET. Exit status 1 when any config fails to
compile, spills or exceeds shared memory at the shapes compiled.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("static_resources: run without TRITON_INTERPRET=1 (the interpreter replaces the kernels)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.jit import create_function_from_signature  # noqa: E402

from xclip_kernels.triton import _common as C  # noqa: E402
from xclip_kernels.triton import cross_frame_attn as CF  # noqa: E402
from xclip_kernels.triton import intra_frame_attn as IF  # noqa: E402
from xclip_kernels.triton import prompt_cross_attn as PC  # noqa: E402

SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
ARCHS = (90, 80)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# X-CLIP: (visual heads, patch tokens + class token per frame, prompt heads); head_dim 64
XCLIP = {"B/32": (12, 50, 8), "B/16": (12, 197, 8), "L/14": (16, 257, 12)}
VIDEOS, FRAMES, CLASSES = 32, 8, 400
# cross-frame frame counts of the `full` subset: every packed tile height up to PACK_MAX_T = 64
CF_FRAMES = (8, 16, 17, 32, 33, 64)
SECTION = "## Triton kernels: static resources (no GPU)"


@dataclass
class Launch:
    kernel: object
    args: tuple
    fixed: dict
    configs: list
    tag: str
    shape: str
    dtype: str
    D: int


@dataclass
class Row:
    arch: int
    tag: str
    kernel: str
    dtype: str
    D: int
    shapes: list = field(default_factory=list)
    config: str = ""
    regs: int = -1
    spill_bytes: int = -1
    local_bytes: int = -1
    smem: int = -1
    tensor_cores: str = ""
    seconds: float = 0.0
    error: str = ""
    divisible: list = field(default_factory=list)  # args the JIT marks divisible by 16
    equal_one: list = field(default_factory=list)  # int args the JIT turns into the constant 1

    @property
    def ok(self) -> bool:
        return (not self.error and self.spill_bytes == 0 and self.local_bytes == 0
                and self.smem <= SMEM_LIMIT[self.arch])


def _inputs(op: str, dims: dict, dtype):
    """Tensors as the model hands them to the op (views of packed projections), never initialised."""
    H, D = dims["H"], dims["D"]
    e = lambda *s: torch.empty(*s, dtype=dtype)  # noqa: E731
    if op == "cross_frame_attn":
        return list(e(dims["B"], dims["T"], 3, H, D).unbind(2))
    if op == "intra_frame_attn":
        return list(e(dims["F"], dims["N"], 3, H, D).unbind(2)) + list(e(dims["F"], dims["M"], 2, H, D).unbind(2))
    return [e(dims["K"], H, D)] + list(e(dims["B"], dims["N"], 2, H, D).unbind(2))


def op_cases(subset: str, dtype: str | None = None, head_dim: int | None = None,
             op: str | None = None) -> list[tuple[str, str, dict, str]]:
    """(op, shape label, sizes, dtype name) to record (optionally only one dtype / head dim / op)."""
    cases = _op_cases(subset)
    return [c for c in cases if (dtype is None or c[3] == dtype) and (head_dim is None or c[2]["D"] == head_dim)
            and (op is None or c[0] == op)]


def _op_cases(subset: str) -> list[tuple[str, str, dict, str]]:
    cases = []
    if subset == "dims":  # every kernel incl. the long-sequence path, bf16 and fp32, each padded head dim
        for dt in ("bf16", "fp32"):
            for D in (32, 64, 128):
                cases.append(("intra_frame_attn", f"N197 D{D}", dict(F=64, N=197, M=1, H=12, D=D), dt))
                cases.append(("intra_frame_attn", f"N577 D{D}", dict(F=16, N=577, M=1, H=12, D=D), dt))
                cases.append(("cross_frame_attn", f"T8 D{D}", dict(B=32, T=8, H=12, D=D), dt))
                cases.append(("prompt_cross_attn", f"D{D}", dict(B=32, K=400, N=197, H=8, D=D), dt))
        return cases
    dtypes = ["bf16"] if subset == "ci" else list(DTYPES)  # "full"
    for dt in dtypes:
        for arch, (H, N, Hp) in XCLIP.items():
            for T in ((FRAMES,) if subset == "ci" else (8, 16, 32)):
                cases.append(("cross_frame_attn", f"{arch} T{T}", dict(B=VIDEOS, T=T, H=H, D=64), dt))
            cases.append(("intra_frame_attn", arch, dict(F=VIDEOS * FRAMES, N=N, M=1, H=H, D=64), dt))
            cases.append(("prompt_cross_attn", arch, dict(B=VIDEOS, K=CLASSES, N=N, H=Hp, D=64), dt))
        if subset != "ci":
            # other head dims (not X-CLIP's): B/16 sequence lengths, the general long-sequence path too
            for D in (32, 80, 96, 128):
                H = 768 // D if 768 % D == 0 else 8
                # every packed row tile (T_pad 8 / 16 / 32 / 64), T a multiple of 16 and not
                for T in CF_FRAMES:
                    cases.append(("cross_frame_attn", f"T{T} D{D}", dict(B=VIDEOS, T=T, H=H, D=D), dt))
                cases.append(("intra_frame_attn", f"N197 D{D}", dict(F=64, N=197, M=1, H=H, D=D), dt))
                cases.append(("prompt_cross_attn", f"D{D}", dict(B=VIDEOS, K=CLASSES, N=197, H=8, D=D), dt))
            for T in CF_FRAMES:  # D = 64 beyond X-CLIP's 8..32 frames
                if T not in (8, 16, 32):
                    cases.append(("cross_frame_attn", f"T{T} D64", dict(B=VIDEOS, T=T, H=12, D=64), dt))
            for D in (32, 64, 128):
                cases.append(("intra_frame_attn", f"N577 D{D}", dict(F=16, N=577, M=1, H=12, D=D), dt))
                cases.append(("cross_frame_attn", f"T96 D{D}", dict(B=4, T=96, H=12, D=D), dt))
                cases.append(("prompt_cross_attn", f"N577 D{D}", dict(B=8, K=CLASSES, N=577, H=8, D=D), dt))
    return cases


def record_launches(arch: int, subset: str, dtype: str | None = None, head_dim: int | None = None,
                    op_name: str | None = None) -> list[Launch]:
    """Every kernel launch the op wrappers make for the cases of ``subset``, as the GPU of ``arch`` would."""
    calls: list[Launch] = []
    current = {}

    def fake_launch(kernel, grid, args, fixed, configs, interp, key, tag):
        name = "/".join(map(str, tag)) if isinstance(tag, tuple) else str(tag)
        calls.append(Launch(kernel, args, dict(fixed), list(configs) or [{}], name, **current))

    saved = (C.launch, C._gpu_arch, C.interpreting, PC.TARGET_PROGRAMS, C.FUSED_MIN_PAIRS)
    C.FUSED_MIN_PAIRS = 132 if arch >= 90 else 108  # SMs of an H100 / A100
    C.launch = fake_launch
    C._gpu_arch = lambda: "hopper" if arch >= 90 else "ampere"
    C.interpreting = lambda: False
    PC.TARGET_PROGRAMS = 264 if arch >= 90 else 216  # 2 programs per SM (H100 / A100)
    try:
        for op, label, dims, dt in op_cases(subset, dtype, head_dim, op_name):
            dtype = DTYPES[dt]
            current = dict(shape=f"{op.split('_')[0]} {label}", dtype=dt, D=dims["D"])
            mod = {"cross_frame_attn": CF, "intra_frame_attn": IF, "prompt_cross_attn": PC}[op]
            xs = _inputs(op, dims, dtype)
            scale = dims["D"] ** -0.5
            out, lse = mod.forward(*xs, scale)
            out = torch.empty(out.shape, dtype=dtype)
            do = torch.empty(out.shape, dtype=dtype)
            lse = torch.empty(lse.shape, dtype=torch.float32)
            if op == "prompt_cross_attn":  # shared q (the model) and batched q
                mod.backward(do, *xs, out, lse, scale)
                qb = torch.empty(dims["B"], dims["K"], dims["H"], dims["D"], dtype=dtype)
                mod.forward(qb, *xs[1:], scale)
                mod.backward(do, qb, *xs[1:], out, lse, scale)
            else:
                grads = None
                if op in ("cross_frame_attn", "intra_frame_attn"):  # gradients into one packed buffer
                    g = torch.empty(*xs[0].shape[:2], 3, *xs[0].shape[2:], dtype=dtype)
                    grads = list(g.unbind(2))
                    if op == "intra_frame_attn":
                        gm = torch.empty(*xs[3].shape[:2], 2, *xs[3].shape[2:], dtype=dtype)
                        grads += list(gm.unbind(2))
                mod.backward(do, *xs, out, lse, scale, grads=grads)
    finally:
        C.launch, C._gpu_arch, C.interpreting, PC.TARGET_PROGRAMS, C.FUSED_MIN_PAIRS = saved
    return calls


_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def _cubin_resources(cubin: bytes) -> dict:
    """REG / STACK / LOCAL / SHARED of the kernel in ``cubin``, read by Triton's bundled cuobjdump."""
    import subprocess
    import tempfile

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def _jit_specialization(kernel, backend, args, kwargs):
    """Signature, constexprs, attrs and options exactly as ``JITFunction.run`` derives them."""
    kwargs = dict(kwargs)
    kwargs["debug"] = False
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound_args, specialization, options)
    return signature, constexprs, attrs, options, tuple(map(str, specialization))


def compile_one(arch: int, launch: Launch, cfg: dict):
    """Compile one launch in one config; returns (dedup key, Row)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    const = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
    kwargs = {**launch.fixed, **const, "num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 2)}
    shown = {k: v for k, v in {**launch.fixed, **const}.items() if k in ("G", "BM", "BN", "TP", "HAS_MSG", "WRITE_DQ")}
    conf = " ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in shown.items())
    conf += f" w{kwargs['num_warps']}s{kwargs['num_stages']}"
    fn = launch.kernel.fn if hasattr(launch.kernel, "fn") and not hasattr(launch.kernel, "signature") else launch.kernel
    row = Row(arch, launch.tag, fn.__name__, launch.dtype, launch.D, [launch.shape], conf)
    sig, consts, attrs, options, spec = _jit_specialization(fn, backend, launch.args, kwargs)
    key = (arch, fn.__name__, spec, tuple(sorted((str(k), str(v)) for k, v in consts.items())),
           kwargs["num_warps"], kwargs["num_stages"])
    names = [p.name for p in fn.params]
    row.divisible = [names[k[0]] for k, v in attrs.items() if "tt.divisibility" in str(v)]
    row.equal_one = [names[k[0]] for k, v in consts.items() if not fn.params[k[0]].is_constexpr and v == 1]
    t0 = time.time()
    log = io.StringIO()
    try:
        triton.knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            ck = triton.compile(ASTSource(fn, sig, consts, attrs), target=target, options=options.__dict__)
        text = log.getvalue()  # ptxas -v output (absent when Triton's cache already held the kernel)
        res = _cubin_resources(ck.asm["cubin"])
        m = _SPILL.search(text)
        row.regs = res["REG"]
        row.local_bytes = res["STACK"] + res["LOCAL"]
        row.spill_bytes = int(m.group(1)) + int(m.group(2)) if m else row.local_bytes
        row.smem = int(ck.metadata.shared)
        ptx = ck.asm.get("ptx", "")
        row.tensor_cores = "wgmma" if "wgmma.mma_async" in ptx else ("mma" if "mma.sync" in ptx else "none")
    except Exception as e:  # noqa: BLE001 - recorded and reported
        row.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    row.seconds = time.time() - t0
    return key, row


def build_table(subset: str, archs=ARCHS, jobs: int = 1, verbose: bool = True, only: str | None = None,
                dtype: str | None = None, head_dim: int | None = None, op: str | None = None) -> list[Row]:
    work = []
    for arch in archs:
        for launch in record_launches(arch, subset, dtype, head_dim, op):
            name = getattr(launch.kernel, "__name__", "") or launch.kernel.fn.__name__
            if only and only not in name:
                continue
            for cfg in launch.configs:
                work.append((arch, launch, cfg))
    rows: dict = {}
    t0 = time.time()

    def add(key, row):
        if key in rows:
            if row.shapes[0] not in rows[key].shapes:
                rows[key].shapes.append(row.shapes[0])
            return
        rows[key] = row
        if verbose:
            flag = "ok  " if row.ok else "FAIL"
            print(f"{flag} sm_{row.arch} {row.kernel} {row.dtype} D{row.D} {row.config}: regs {row.regs} "
                  f"spill {row.spill_bytes} smem {row.smem} tc {row.tensor_cores} {row.error} "
                  f"({row.seconds:.1f} s, total {time.time() - t0:.0f} s)", flush=True)

    # dedupe before compiling: the specialization key alone decides
    todo, seen = [], {}
    for arch, launch, cfg in work:
        fn = launch.kernel
        const = {k: v for k, v in cfg.items() if k not in ("num_warps", "num_stages")}
        kwargs = {**launch.fixed, **const, "num_warps": cfg.get("num_warps", 4), "num_stages": cfg.get("num_stages", 2)}
        backend = make_backend(GPUTarget("cuda", arch, 32))
        sig, consts, attrs, options, spec = _jit_specialization(fn, backend, launch.args, kwargs)
        key = (arch, fn.__name__, spec, tuple(sorted((str(k), str(v)) for k, v in consts.items())),
               kwargs["num_warps"], kwargs["num_stages"])
        if key in seen:
            seen[key].append(f"{launch.shape}")
            continue
        seen[key] = [launch.shape]
        todo.append((key, arch, launch, cfg))
    if verbose:
        print(f"{len(work)} launch configs, {len(todo)} distinct compilations", flush=True)
    if jobs > 1:
        import multiprocessing as mp

        global _TODO
        _TODO = todo
        with mp.get_context("fork").Pool(jobs) as pool:
            for key, row in pool.imap_unordered(_compile_index, range(len(todo))):
                add(key, row)
    else:
        for _, arch, launch, cfg in todo:
            add(*compile_one(arch, launch, cfg))
    for key, row in rows.items():
        for s in seen.get(key, []):
            if s not in row.shapes:
                row.shapes.append(s)
    return sorted(rows.values(), key=lambda r: (r.arch, r.dtype, r.D, r.tag, r.kernel, r.config))


_TODO: list = []


def _compile_index(i):
    _, arch, launch, cfg = _TODO[i]
    return compile_one(arch, launch, cfg)


def markdown(rows: list[Row], subset: str) -> str:
    fails = [r for r in rows if not r.ok]
    lines = [
        f"Static resources of every Triton kernel in every autotune config (`python -m benchmarks.static_resources"
        f"{'' if subset == 'full' else ' --subset ' + subset}`; triton {triton.__version__}, ptxas of Triton's bundle; "
        f"compiled with the JIT's own specialization, no GPU). {len(rows)} distinct compilations, "
        f"{len(fails)} failing (spill, over the shared-memory limit or compile error).",
        "",
        "| arch | kernel (tag) | dtype | D | config | regs | spill B | smem KiB | tensor cores | shapes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    merged: dict = {}  # rows that differ only in specialization details (e.g. H = 12 vs 16) read as one
    for r in rows:
        k = (r.arch, r.kernel, r.tag, r.dtype, r.D, r.config, r.regs, r.spill_bytes, r.smem, r.tensor_cores, r.error)
        if k in merged:
            merged[k].shapes = merged[k].shapes + [s for s in r.shapes if s not in merged[k].shapes]
        else:
            merged[k] = Row(**{**asdict(r), "shapes": list(r.shapes)})
    for r in merged.values():
        shapes = ", ".join(sorted(set(r.shapes)))
        if len(shapes) > 60:
            shapes = shapes[:57] + "..."
        mark = "" if r.ok else " **FAIL**"
        smem = f"{r.smem / 1024:.1f}" if r.smem >= 0 else "-"
        lines.append(f"| sm_{r.arch} | {r.kernel} ({r.tag}){mark} | {r.dtype} | {r.D} | {r.config} | {r.regs} | "
                     f"{r.spill_bytes} | {smem} | {r.tensor_cores} | {shapes} |" + (f" {r.error}" if r.error else ""))
    return "\n".join(lines) + "\n"


def summary(rows: list[Row]) -> str:
    out = []
    for arch in sorted({r.arch for r in rows}, reverse=True):
        for dt in DTYPES:
            rs = [r for r in rows if r.arch == arch and r.dtype == dt]
            if not rs:
                continue
            ok = [r for r in rs if r.ok]
            out.append(f"sm_{arch} {dt}: {len(rs)} compiled, {len(rs) - len(ok)} failing; max regs "
                       f"{max(r.regs for r in rs)}, max smem {max(r.smem for r in rs) / 1024:.1f} KiB "
                       f"(limit {SMEM_LIMIT[arch] // 1024}); tensor cores: "
                       f"{', '.join(sorted({r.tensor_cores for r in rs}))}")
    return "\n".join(out)


def write_results(md: str, path: Path, subset: str) -> None:
    """Replace (or append) this subset's table in the RESULTS.md section, between its own markers."""
    begin, end = f"<!-- static-resources:{subset}:begin -->", f"<!-- static-resources:{subset}:end -->"
    text = path.read_text()
    block = f"{begin}\n{md}{end}"
    if begin in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + block + text[b:]
    else:
        if SECTION not in text:
            text = text.rstrip() + f"\n\n{SECTION}\n"
        text = text.rstrip() + f"\n\n### subset `{subset}`\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subset", choices=("ci", "dims", "full"), default="full")
    ap.add_argument("--arch", type=int, action="append", help="80 and/or 90 (default both)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel compile processes")
    ap.add_argument("--only", default=None, help="compile only kernels whose name contains this")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="only this dtype")
    ap.add_argument("--head-dim", type=int, default=None, help="only this head dim")
    ap.add_argument("--op", choices=("cross_frame_attn", "intra_frame_attn", "prompt_cross_attn"), default=None,
                    help="only the shapes of this op")
    ap.add_argument("--from-json", nargs="+", default=None, help="no compiling: merge these --json outputs")
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--md", default=None, help="write the Markdown table here")
    ap.add_argument("--write-results", action="store_true", help="replace the section in benchmarks/RESULTS.md")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.from_json:
        rows = [Row(**r) for f in a.from_json for r in json.loads(Path(f).read_text())]
        rows.sort(key=lambda r: (r.arch, r.dtype, r.D, r.tag, r.kernel, r.config))
    else:
        rows = build_table(a.subset, tuple(a.arch or ARCHS), a.jobs, only=a.only, dtype=a.dtype, head_dim=a.head_dim,
                           op=a.op)
    md = markdown(rows, a.subset)
    print(md)
    print(summary(rows))
    print(f"compiled {len(rows)}, failed {sum(not r.ok for r in rows)}, {time.time() - t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if a.md:
        Path(a.md).write_text(md)
    if a.write_results:
        write_results(summary(rows).replace("\n", "  \n") + "\n\n" + md,
                      Path(__file__).with_name("RESULTS.md"), a.subset)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
