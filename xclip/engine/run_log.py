"""What a training run writes as it goes: the console/file log, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import logging
import math
import os
import sys

import numpy as np

__all__ = ["LOGGER_NAME", "setup_logger", "Metrics", "file_only", "fmt_time"]

LOGGER_NAME = "xclip.train"


class _TqdmHandler(logging.StreamHandler):
    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # pragma: no cover
            self.handleError(record)


def setup_logger(output: str | None, is_main: bool, name: str = LOGGER_NAME) -> logging.Logger:
    """Console (through tqdm) + ``output/log.txt`` on rank 0; errors only elsewhere."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    if is_main:
        console = _TqdmHandler()
        console.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(console)
        if output:
            os.makedirs(output, exist_ok=True)
            fh = logging.FileHandler(os.path.join(output, "log.txt"))
            fh.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
            logger.addHandler(fh)
    else:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(logging.ERROR)
        logger.addHandler(h)
    return logger


class Metrics:
    """metrics.jsonl (machine-readable history) + TensorBoard scalars, rank 0 only."""

    def __init__(self, output: str, enabled: bool, tensorboard: bool, log: logging.Logger):
        self.enabled = enabled
        self.file = None
        self.tb = None
        if not enabled:
            return
        self.file = open(os.path.join(output, "metrics.jsonl"), "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output, "tb"))
            except Exception as e:  # tensorboard missing or broken: keep training
                log.info(f"TensorBoard disabled: {type(e).__name__}: {e}")

    def write(self, kind: str, step: int, **values) -> None:
        if not self.enabled:
            return
        rec = {"kind": kind, "step": int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()}}
        self.file.write(json.dumps(rec) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
            self.file = None
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def file_only(log: logging.Logger):
    """Log to the text file only (the progress bar already shows it on the console)."""
    def emit(msg: str) -> None:
        for h in log.handlers:
            if isinstance(h, logging.FileHandler):
                h.emit(log.makeRecord(log.name, logging.INFO, __file__, 0, msg, (), None))
    return emit


def fmt_time(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(max(0, s))
    return f"{s // 3600}:{(s % 3600) // 60:02d}:{s % 60:02d}"
