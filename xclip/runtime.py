"""The runtime: device choice, process group, mixed precision, view counts (one copy of each).

* :func:`init_distributed` / :func:`cleanup`: the process group torchrun
  describes. No launch logic: ``torchrun`` (one node or many) sets ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain
  ``python``/``xclip train`` without them runs as a single process.
* :func:`select_device`: ``auto`` / ``cpu`` / ``cuda`` / ``cuda:N`` -> ``torch.device``.
* :func:`parse_amp`, :func:`amp_dtype`, :func:`autocast`: the ``bf16`` / ``fp16`` / ``none`` names.
* :func:`parse_views`: ``--views CLIPSxCROPS``.
* :func:`keep_freed_memory`: glibc's allocator told to keep freed blocks for
  reuse (CPU training and inference allocate and free the same large
  activations every step).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "cleanup", "barrier", "all_reduce_sum", "broadcast_object", "is_main",
           "select_device", "keep_freed_memory", "parse_amp", "amp_dtype", "autocast", "parse_views", "AMP_NAMES", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda")

# Every spelling accepted for train.amp / --amp, and the canonical name it means.
AMP_NAMES = {"bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
             "none": "none", "false": "none", "fp32": "none", "float32": "none"}


def parse_amp(name) -> str:
    """``bf16`` / ``fp16`` / ``none`` from any accepted spelling (``False`` and ``None`` mean none)."""
    key = "none" if name is None or name is False else str(name).lower()
    if key not in AMP_NAMES:
        raise ValueError(f"amp must be bf16, fp16 or none, got {name!r}")
    return AMP_NAMES[key]


def amp_dtype(name, device: torch.device, *, cuda_only: bool = False) -> torch.dtype | None:
    """The autocast dtype for ``name`` on ``device`` (None: full precision).

    ``cuda_only``: no autocast off CUDA (evaluation); otherwise bf16 autocasts
    on the CPU too and fp16 off CUDA is an error (training).
    """
    a = parse_amp(name)
    if a == "none" or (cuda_only and device.type != "cuda"):
        return None
    if a == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError("train.amp=fp16 needs a CUDA device (use bf16 or none on the CPU)")
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def parse_views(s: str) -> tuple[int, int]:
    """``"4x3"`` -> (4 clips, 3 crops); crops must be 1 or 3."""
    try:
        c, k = s.lower().split("x")
        c, k = int(c), int(k)
    except ValueError:
        raise ValueError(f"--views must look like CLIPSxCROPS (e.g. 4x3), got {s!r}") from None
    if c < 1 or k not in (1, 3):
        raise ValueError(f"--views {s!r}: clips must be >= 1 and crops 1 or 3")
    return c, k


def select_device(name: str | None = "auto", *, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` (this process's local rank) or ``cuda:N``."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} asked for but CUDA is not available here")
        n = torch.cuda.device_count()
        index = local_rank if dev.index is None else dev.index
        if index >= n:
            raise ValueError(f"cuda device {index} asked for but only {n} CUDA device(s) are visible")
        return torch.device("cuda", index)
    if dev.type != "cpu":
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs).

    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` (this
    process's ``LOCAL_RANK``) or ``cuda:N`` (one process).
    """
    rank = _env_int("RANK", 0)
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    dev = select_device(device, local_rank=local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    backend = None
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        if not dist.is_initialized():
            kwargs = {"device_id": dev} if use_cuda else {}
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                    timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_object(obj, src: int = 0):
    if dist.is_available() and dist.is_initialized():
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


# mallopt(3) parameters (glibc's <malloc.h>)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS; True when applied.

    By default glibc serves every block above 128 KiB-32 MiB (its dynamic threshold) with its own ``mmap`` and
    unmaps it on ``free``. A CPU training step allocates and frees the same activations every step (the
    demo's: ~10,000 fresh pages a step), so every step pays the kernel's page faults and zeroing again; in a
    virtual machine that is measurably slow (measured on the 2-core development VM, under load: 3,000-11,000
    minor faults and ~189 ms of CPU per demo step before, under 100 faults and ~162 ms after). With the mmap
    threshold at 1 GiB and the trim threshold at 2 GiB (the largest C int), freed blocks stay in the heap and
    the next step reuses them. The arithmetic is unchanged (same kernels, same 64-byte alignment); the process just holds on to its peak
    memory. Only on Linux with glibc; ``XCLIP_KEEP_FREED_MEMORY=0`` turns it off. Idempotent.
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is not None:
        return _MALLOC_TUNED
    _MALLOC_TUNED = False
    if os.environ.get("XCLIP_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    import platform

    if not platform.system() == "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _MALLOC_TUNED = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    except (OSError, AttributeError):
        _MALLOC_TUNED = False
    return _MALLOC_TUNED
