"""The ``xclip`` command: demo, train, eval, predict, convert, bench.

Each subcommand lives in its own module and is imported only when used, so
``xclip --help`` stays fast.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("xclip.demo", "synthetic videos: generate, train, evaluate (incl. zero-shot), report"),
    "train": ("xclip.train.cli", "train from a YAML config (torchrun for several processes)"),
    "eval": ("xclip.eval.cli", "evaluate a checkpoint (multi-view, zero-shot)"),
    "predict": ("xclip.eval.predict", "top-k labels for video files"),
    "convert": ("xclip.model.convert", "convert checkpoints between formats (hf, official)"),
    "bench": ("xclip.apps.bench", "whole-model speed and memory benchmark"),
}


def usage() -> str:
    lines = ["usage: xclip COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "`xclip COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"xclip: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
