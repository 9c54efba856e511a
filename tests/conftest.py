"""tests/ mirrors the package: kernels/, model/, data/, engine/, apps/ (core tests at the top).

Test modules share helpers by bare module name (``from test_model import tiny``,
``from train_utils import ...``), across folders: every folder of tests/ is put on
``sys.path`` here, before any test module is imported.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _d in sorted(p for p in _HERE.iterdir() if p.is_dir() and not p.name.startswith((".", "_")) and p.name != "fixtures"):
    if str(_d) not in sys.path:
        sys.path.insert(0, str(_d))
