"""The ``xclip`` command: demo, train, eval, predict, convert, bench.

Each subcommand lives in its own module and is imported only when used, so
``xclip --help`` stays fast.

Errors: a user error (a ``ValueError`` such as ``ConfigError`` or
``CheckpointError``, or an ``OSError`` naming a file: missing, unreadable,
disk full) ends in one line on stderr, ``xclip COMMAND: error: ...``, and
exit status 2; Ctrl-C ends with status 130. Anything else is a bug and keeps
its traceback. ``xclip --debug COMMAND ...`` or ``XCLIP_DEBUG=1`` shows the
traceback of user errors too. This is the one place that decides; commands
that catch ``ValueError`` themselves (so that calling their ``main`` in
Python also returns 2) go through :func:`user_error`.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "demo": ("xclip.apps.demo.demo", "synthetic videos: generate, train, evaluate (incl. zero-shot), report"),
    "train": ("xclip.apps.train", "train from a YAML config (torchrun for several processes)"),
    "eval": ("xclip.apps.eval", "evaluate a checkpoint (multi-view, zero-shot)"),
    "predict": ("xclip.apps.predict", "top-k labels for video files"),
    "convert": ("xclip.apps.convert", "convert checkpoints between formats (hf, official)"),
    "bench": ("xclip.apps.bench", "whole-model speed and memory benchmark"),
}

DEBUG_ENV = "XCLIP_DEBUG"


def usage() -> str:
    lines = ["usage: xclip [--debug] COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, doc) in COMMANDS.items()]
    lines += ["", "`xclip COMMAND --help` for a command's options.",
              f"--debug (or {DEBUG_ENV}=1): show tracebacks for user errors too."]
    return "\n".join(lines)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def describe_error(e: BaseException) -> str | None:
    """The one line a user sees for a user error, or None for a bug (keep the traceback)."""
    if isinstance(e, UnicodeDecodeError):  # a ValueError that does not say which file
        return f"a file is not valid UTF-8 text ({e.reason} at byte {e.start})"
    if isinstance(e, ValueError):
        return "; ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
    if isinstance(e, OSError) and (e.filename is not None or e.errno is not None):
        text = e.strerror or str(e) or type(e).__name__
        return f"{text}: {e.filename}" if e.filename is not None else text
    return None


def user_error(prog: str, e: BaseException) -> int:
    """Print ``prog: error: <one line>`` and return 2; re-raise when debugging or when ``e`` is a bug."""
    msg = describe_error(e)
    if msg is None or debug_enabled():
        raise e
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def run_command(prog: str, fn, argv) -> int:
    """``fn(argv)`` with user errors turned into one line and exit status 2."""
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        return user_error(prog, e)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    while argv and argv[0] == "--debug":
        os.environ[DEBUG_ENV] = "1"  # also reaches the commands' own handlers and worker processes
        argv = argv[1:]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"xclip: unknown command {cmd!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    return run_command(f"xclip {cmd}", module.main, rest)


if __name__ == "__main__":
    sys.exit(main())
