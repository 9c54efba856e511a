"""Old import paths (``xclip.train.*``, ``xclip.eval.*``, ``xclip.demo``) kept as deprecated aliases.

Each old module name is registered in ``sys.modules`` as the module that now
holds its code, so ``from xclip.train.trainer import train`` and
``import xclip.eval.metrics`` keep working, with one ``DeprecationWarning``.
"""

from __future__ import annotations

import importlib
import sys
import warnings


def alias_package(old: str, new: str, submodules: dict[str, str]) -> None:
    """Warn that ``old`` moved to ``new`` and map ``old.<name>`` to each module in ``submodules``."""
    warnings.warn(f"{old} is deprecated; import from {new} instead", DeprecationWarning, stacklevel=3)
    package = sys.modules[old]
    for name, target in submodules.items():
        module = sys.modules.setdefault(f"{old}.{name}", importlib.import_module(target))
        setattr(package, name, module)  # ``import xclip.eval.cli`` then ``xclip.eval.cli`` works
