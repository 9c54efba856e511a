"""Test-suite setup shared by tests/ and benchmarks/.

- Without a CUDA device, Triton kernels run on the CPU through the Triton
  interpreter: TRITON_INTERPRET=1 is set here (before any Triton kernel is
  defined) unless the environment already says otherwise.
- ``@pytest.mark.gpu`` tests are skipped when no CUDA device is visible.
- ``@pytest.mark.slow`` tests (tens of minutes on 2 cores: e.g. compiling every
  kernel at every head dim and dtype) run only with ``XCLIP_SLOW_TESTS=1``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


RUN_SLOW = os.environ.get("XCLIP_SLOW_TESTS", "0") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    not_slow = pytest.mark.skip(reason="slow: set XCLIP_SLOW_TESTS=1 to run it")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(no_gpu)
        if "slow" in item.keywords and not RUN_SLOW:
            item.add_marker(not_slow)
