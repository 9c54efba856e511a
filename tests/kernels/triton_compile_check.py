"""Compile every Triton kernel of xclip_kernels.triton for a CUDA target, no GPU needed.

Kept as the old entry point; the work is done by ``benchmarks.static_resources``
(the JIT's own specialization, registers, spills, shared memory, tensor-core
instructions), which ``tests/kernels/test_triton_resources.py`` runs.

    python tests/kernels/triton_compile_check.py [ARCH=90] [all|first]

``first`` (default): X-CLIP shapes, bf16 (``--subset ci``); ``all``: the full table.
Must run WITHOUT TRITON_INTERPRET. Exit status 1 if any config fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import static_resources  # noqa: E402

if __name__ == "__main__":
    arch = sys.argv[1] if len(sys.argv) > 1 else "90"
    subset = "full" if len(sys.argv) > 2 and sys.argv[2] == "all" else "ci"
    sys.exit(static_resources.main(["--subset", subset, "--arch", arch]))
