"""The ``xclip`` entry point (``xclip = "xclip.cli:main"``); the dispatch lives in :mod:`xclip.apps.cli`."""

from xclip.apps.cli import COMMANDS, main, usage

__all__ = ["COMMANDS", "main", "usage"]
