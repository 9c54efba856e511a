"""Test-suite setup shared by tests/ and benchmarks/.

- Without a CUDA device, Triton kernels run on the CPU through the Triton
  interpreter: TRITON_INTERPRET=1 is set here (before any Triton kernel is
  defined) unless the environment already says otherwise.
- ``@pytest.mark.gpu`` tests are skipped when no CUDA device is visible.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
