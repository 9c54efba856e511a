"""Static resource check of the Triton kernels, no GPU: every kernel in every autotune config.

Runs ``python -m benchmarks.static_resources`` (a subprocess: the suite sets
TRITON_INTERPRET=1, which replaces the kernels by Python functions) for sm_90
and sm_80. The default test compiles the X-CLIP shapes (B/32, B/16, L/14;
head dim 64; bfloat16; the layouts the model passes: views of packed
projections, gradients into a packed buffer) with the JIT's own
specialization, and fails on a compile error, a register spill or a config
over the shared-memory limit (about a minute per arch on 2 cores with a cold
Triton cache). The ``slow`` tests compile the ``dims`` subset in chunks of
(arch, dtype, padded head dim): every kernel including the long-sequence path,
bf16 and fp32, head dims 32 / 64 / 128 (a few minutes per chunk; float32
spilling candidates take ptxas 10-30 s each); the tables are in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")

ROOT = Path(__file__).resolve().parents[2]
EXPECTED_KERNELS = {"attn_fwd_kernel", "attn_bwd_fused_kernel", "_cf_bwd_packed_kernel", "_shared_dq_kernel"}


def _run(tmp_path, *args, timeout):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    out = tmp_path / "rows.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.static_resources", *args, "--json", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    text = r.stdout + r.stderr
    if "ptxas" in text and ("not found" in text or "No such file" in text):
        pytest.skip("Triton's bundled ptxas is missing")
    rows = json.loads(out.read_text()) if out.exists() else []
    return r.returncode, rows, text


def _check(rows, arch):
    assert rows, "no kernel compiled"
    bad = [r for r in rows if r["error"] or r["spill_bytes"] != 0 or r["smem"] > {80: 163, 90: 227}[arch] * 1024]
    assert not bad, "\n".join(f"{r['kernel']} {r['dtype']} D{r['D']} {r['config']}: spill {r['spill_bytes']} "
                              f"smem {r['smem']} {r['error']}" for r in bad)
    for r in rows:
        if r["dtype"] in ("bf16", "fp16"):
            assert r["tensor_cores"] in ("mma", "wgmma"), f"no tensor-core instruction: {r}"
    fused16 = [r for r in rows if r["kernel"] == "attn_bwd_fused_kernel" and r["dtype"] in ("bf16", "fp16")]
    if arch == 90 and fused16:  # the large 16-bit tiles reach Hopper's warpgroup MMA (float32: no tensor cores)
        assert any(r["tensor_cores"] == "wgmma" for r in fused16)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_xclip_shapes_compile_without_spills(arch, tmp_path):
    """Every kernel x every autotune config at X-CLIP B/32, B/16, L/14 shapes (bf16, D=64)."""
    rc, rows, text = _run(tmp_path, "--subset", "ci", "--arch", str(arch), "--jobs", "2", timeout=580)
    assert rc == 0, text[-6000:]
    _check(rows, arch)
    assert {r["kernel"] for r in rows} >= EXPECTED_KERNELS
    # the JIT's specialization was applied: 16-aligned pointers and strides marked, unit strides constant
    fwd = [r for r in rows if r["kernel"] == "attn_fwd_kernel" and "intra" in " ".join(r["shapes"])]
    assert fwd and all({"Q", "K", "O", "LSE", "sqt"} <= set(r["divisible"]) for r in fwd), fwd[:1]
    assert all({"sqd", "skd", "sod"} <= set(r["equal_one"]) for r in fwd), fwd[:1]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_head_dims_and_dtypes_compile_without_spills(arch, dtype, head_dim, tmp_path):
    """Every kernel (the long-sequence path too) x every config, per dtype and padded head dim."""
    rc, rows, text = _run(tmp_path, "--subset", "dims", "--arch", str(arch), "--dtype", dtype,
                          "--head-dim", str(head_dim), "--jobs", "2", timeout=3500)
    assert rows, text[-3000:]
    _check(rows, arch)
    assert rc == 0, text[-6000:]
    assert {r["kernel"] for r in rows} >= EXPECTED_KERNELS | {"attn_bwd_dkdv_kernel", "attn_bwd_dq_kernel"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("head_dim", [32, 128])
@pytest.mark.parametrize("arch", [90, 80], ids=["sm90", "sm80"])
def test_cross_frame_fp32_frame_counts_compile_without_spills(arch, head_dim, tmp_path):
    """float32 cross-frame at T = 8..64 (every packed tile height): what the wrappers launch compiles without a
    spill; the packed backward is launched only up to CF.packed_max_t (its 32-row tile at D = 128 and its 64-row
    tile spilled), the longer sequences reach the G = 1 kernels."""
    rc, rows, text = _run(tmp_path, "--subset", "full", "--op", "cross_frame_attn", "--arch", str(arch),
                          "--dtype", "fp32", "--head-dim", str(head_dim), "--jobs", "2", timeout=1700)
    _check(rows, arch)
    assert rc == 0, text[-6000:]
    limit = 16 if head_dim > 64 else 32
    packed = [r for r in rows if r["kernel"] == "_cf_bwd_packed_kernel"]
    assert packed and all(int(r["config"].split("TP=")[1].split()[0]) <= limit for r in packed), packed
    for T in (17, 32, 33, 64):  # every frame count of the subset is compiled, on one path or the other
        shape = f"cross T{T} D{head_dim}"
        kernels = {r["kernel"] for r in rows if shape in r["shapes"]}
        assert kernels, shape
        if T > limit:
            assert kernels <= {"attn_fwd_kernel", "attn_bwd_fused_kernel", "attn_bwd_dkdv_kernel",
                               "attn_bwd_dq_kernel"}, (shape, kernels)
