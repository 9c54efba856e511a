"""Reading checkpoint files without running anything stored in them.

Every pickle-based format goes through one restricted unpickler:

- ``find_class`` returns only torch's weights-only allow-list (tensor and
  storage rebuilders, dtypes, ``OrderedDict``, ``set``...), a few numpy data
  constructors and a plain ``dict`` stand-in for ``yacs.config.CfgNode``; any
  other global (an attacker's ``os.system``, a ``__reduce__`` payload, a
  TorchScript class) becomes an inert placeholder class that records its
  arguments and calls nothing;
- ``BUILD`` (``__setstate__``) is honoured only on placeholders, the yacs
  stand-in, numpy arrays / dtypes and tensors; on anything else (a class, a
  function) it is refused, so a pickle cannot monkeypatch the allow-listed
  objects;
- tensor rebuilders get their backward hooks replaced by an empty dict.

Zip archives, both ``torch.save``'s format and TorchScript archives (OpenAI's
CLIP releases), are read here from ``<archive>/data.pkl`` and the raw storages
``<archive>/data/<key>``; ``torch.load`` and ``torch.jit.load`` are never called
on them (``torch.load`` hands TorchScript-looking zips to ``torch.jit.load``,
which runs the archive's TorchScript, e.g. a scripted ``__setstate__``). For a
TorchScript archive the module tree in ``data.pkl`` is walked; which attributes
are parameters and buffers is read as text from the ``__parameters__`` /
``__buffers__`` lines of the class definitions in ``code/``; that code is never
compiled or run. Files that are not zips (torch's legacy format) go through
``torch.load(weights_only=True)`` and, if that refuses, ``torch.load`` with the
restricted unpickler as its ``pickle_module``.

Every failure is a :class:`CheckpointError` naming the file and what is wrong.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CfgNodeStandIn", "OpaqueObject", "RestrictedUnpickler", "restricted_pickle",
           "read_pickle_file", "read_zip_archive", "is_zip"]


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be read: names the file and what is wrong."""

    def __init__(self, path, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


# --- placeholders --------------------------------------------------------------------


class CfgNodeStandIn(dict):
    """What a pickled ``yacs.config.CfgNode`` becomes: a dict with attribute access."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state):  # yacs' private flags; kept out of the mapping
        object.__setattr__(self, "_yacs_state", state)


class OpaqueObject:
    """A placeholder for a pickled object of a class outside the allow-list (never constructed)."""

    def __init__(self, qualname: str, args: tuple = ()) -> None:
        self._qualname, self._args, self._state, self._items = qualname, args, None, {}

    def __setstate__(self, state) -> None:
        self._state = state

    def __setitem__(self, k, v) -> None:
        self._items[k] = v

    def append(self, v) -> None:
        self._items[len(self._items)] = v

    def extend(self, vs) -> None:
        for v in vs:
            self.append(v)

    def __repr__(self) -> str:
        return f"<unpickled {self._qualname} (not constructed)>"


def _opaque_class(qualname: str) -> type:
    class _Opaque(OpaqueObject):
        def __new__(cls, *args, **kwargs):
            obj = object.__new__(cls)
            OpaqueObject.__init__(obj, qualname, args)
            return obj

        def __init__(self, *args, **kwargs):  # pickle never calls __init__ for NEWOBJ; REDUCE does
            if not hasattr(self, "_qualname"):
                OpaqueObject.__init__(self, qualname, args)

    _Opaque.__qualname__ = _Opaque.__name__ = qualname
    return _Opaque


# --- the allow-list ------------------------------------------------------------------


def _without_hooks(fn, hooks_at: int):
    """A tensor rebuilder whose ``backward_hooks`` argument (position ``hooks_at``) is replaced by ``{}``."""

    def rebuild(*args):
        if len(args) > hooks_at:
            args = (*args[:hooks_at], OrderedDict(), *args[hooks_at + 1:])
        return fn(*args)

    rebuild.__name__ = fn.__name__
    return rebuild


def _allowed_globals() -> dict[str, Any]:
    from torch import _utils
    from torch import _weights_only_unpickler as wou

    allowed = dict(wou._get_allowed_globals())
    allowed["torch._utils._rebuild_tensor_v2"] = _without_hooks(_utils._rebuild_tensor_v2, 5)
    if hasattr(_utils, "_rebuild_tensor_v3"):
        allowed["torch._utils._rebuild_tensor_v3"] = _without_hooks(_utils._rebuild_tensor_v3, 5)
    allowed["torch._utils._rebuild_parameter"] = _without_hooks(_utils._rebuild_parameter, 2)
    if hasattr(_utils, "_rebuild_parameter_with_state"):
        allowed["torch._utils._rebuild_parameter_with_state"] = _without_hooks(_utils._rebuild_parameter_with_state, 2)
    allowed["yacs.config.CfgNode"] = CfgNodeStandIn
    allowed["builtins.frozenset"] = frozenset
    allowed["builtins.slice"] = slice
    allowed["builtins.tuple"] = tuple
    allowed["builtins.list"] = list
    allowed["builtins.dict"] = dict
    try:
        import numpy as np

        try:
            from numpy._core import multiarray as ma
        except ImportError:  # numpy 1.x
            from numpy.core import multiarray as ma
        allowed["numpy.dtype"] = np.dtype
        allowed["numpy.ndarray"] = np.ndarray
        for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[f"{mod}.scalar"] = ma.scalar
            allowed[f"{mod}._reconstruct"] = ma._reconstruct
        for name in dir(getattr(np, "dtypes", None) or object()):
            if name.endswith("DType"):
                allowed[f"numpy.dtypes.{name}"] = getattr(np.dtypes, name)
    except Exception:  # numpy absent or changed: its objects become placeholders
        pass
    return allowed


_ALLOWED: dict[str, Any] | None = None


def _build_allowed(obj) -> bool:
    """Whether BUILD (``__setstate__`` / ``__dict__`` update) may be applied to ``obj``."""
    if isinstance(obj, type):  # never set attributes on a class (would monkeypatch it for the process)
        return False
    if isinstance(obj, (OpaqueObject, CfgNodeStandIn, torch.Tensor, OrderedDict)):  # state_dict()._metadata
        return True
    try:
        import numpy as np

        return isinstance(obj, (np.ndarray, np.dtype))
    except ImportError:
        return False


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD can be checked
    """An unpickler that constructs only allow-listed objects; anything else becomes an inert placeholder."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str):
        global _ALLOWED
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        if self.proto < 3 and self.fix_imports:  # protocol-2 pickles (torch.save's) name builtins as Python 2 did
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        key = f"{module}.{name}"
        obj = _ALLOWED.get(key)
        return obj if obj is not None else _opaque_class(key)

    def load_build(self):
        state = self.stack[-1]
        inst = self.stack[-2]
        if not _build_allowed(inst):
            raise pickle.UnpicklingError(
                f"refused: the pickle sets the state of {type(inst).__name__} {getattr(inst, '__name__', '')}"
                .rstrip())
        if isinstance(inst, torch.Tensor):
            self.stack.pop()  # tensors carry no state worth setting here
            return
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build


class _RestrictedPickleModule:
    """What ``torch.load(pickle_module=...)`` needs: ``Unpickler`` and ``load``."""

    __name__ = "xclip_restricted_pickle"
    Unpickler = RestrictedUnpickler

    @staticmethod
    def load(f, **kw):
        return RestrictedUnpickler(f, **kw).load()


restricted_pickle = _RestrictedPickleModule()


# --- zip archives (torch.save's format and TorchScript) ------------------------------


def is_zip(path: Path) -> bool:
    """A zip by its first bytes (as torch decides) or by its central directory (as Python's zipfile does)."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or zipfile.is_zipfile(path)


def _storage_dtype(storage_type) -> torch.dtype:
    if storage_type is torch.UntypedStorage:
        return torch.uint8
    dtype = getattr(storage_type, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
    return dtype


def _parse_module_classes(z: zipfile.ZipFile, prefix: str) -> dict[str, set[str]]:
    """``{"__torch__.a.b.Class": {parameter and buffer names}}`` read as text from TorchScript's ``code/``.

    The code is only scanned for the ``__parameters__ = [...]`` and ``__buffers__ = [...]`` lines; it is
    never compiled or run.
    """
    out: dict[str, set[str]] = {}
    code = f"{prefix}code/"
    for name in z.namelist():
        if not (name.startswith(code) and name.endswith(".py")):
            continue
        module = name[len(code):-3].replace("/", ".")
        cls = None
        for line in z.read(name).decode("utf-8", errors="replace").splitlines():
            m = re.match(r"class (\w+)\(", line)
            if m:
                cls = f"{module}.{m.group(1)}"
                out.setdefault(cls, set())
                continue
            m = re.match(r"\s+__(parameters|buffers)__ = \[(.*)\]\s*$", line)
            if m and cls is not None:
                out[cls].update(re.findall(r'"([^"]*)"', m.group(2)))
    return out


def _module_state_dict(root: Any, classes: dict[str, set[str]]) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript module tree (placeholders with dict state)."""
    sd: dict[str, torch.Tensor] = {}
    seen: set[int] = set()

    def walk(obj, prefix: str) -> None:
        if id(obj) in seen or not isinstance(obj, OpaqueObject) or not isinstance(obj._state, dict):
            return  # a module whose state is not a plain attribute dict (custom __getstate__): no weights read
        seen.add(id(obj))
        names = classes.get(obj._qualname)
        for attr, value in obj._state.items():
            if not isinstance(attr, str):
                continue
            if isinstance(value, torch.Tensor):
                if names is None or attr in names:
                    sd[prefix + attr] = value
            elif isinstance(value, OpaqueObject):
                walk(value, f"{prefix}{attr}.")

    walk(root, "")
    return sd


def read_zip_archive(path: Path) -> Any:
    """The object in a ``torch.save`` zip, or the state dict of a TorchScript archive, read without executing."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(path, f"not a readable zip archive (truncated or corrupt?): {e}") from None
    with z:
        names = z.namelist()
        pkls = [n for n in names if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pkls) != 1:
            raise CheckpointError(path, "a zip archive but not a PyTorch checkpoint: expected one <archive>/data.pkl, "
                                        f"found {len(pkls)} (first entries: {names[:5]})")
        prefix = pkls[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() not in (b"little", b""):
            raise CheckpointError(path, "big-endian checkpoints are not supported")
        torchscript = prefix + "constants.pkl" in names or any(n.startswith(prefix + "code/") for n in names)
        storages: dict[str, torch.storage.TypedStorage] = {}

        def persistent_load(pid):
            if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
                raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
            storage_type, key, _location, numel = pid[1:5]
            key = key.decode() if isinstance(key, bytes) else str(key)
            dtype = _storage_dtype(storage_type)
            if key not in storages:
                record = f"{prefix}data/{key}"
                try:
                    raw = bytearray(z.read(record))
                except KeyError:
                    raise pickle.UnpicklingError(f"missing tensor data {record}") from None
                itemsize = torch.empty((), dtype=dtype).element_size()
                if not isinstance(numel, int) or numel < 0 or len(raw) < numel * itemsize:
                    raise pickle.UnpicklingError(
                        f"tensor data {record} has {len(raw)} bytes, expected {numel} x {itemsize}")
                untyped = torch.frombuffer(raw, dtype=torch.uint8).untyped_storage() if raw else \
                    torch.UntypedStorage(0)
                storages[key] = torch.storage.TypedStorage(wrap_storage=untyped, dtype=dtype, _internal=True)
            return storages[key]

        try:
            up = RestrictedUnpickler(io.BytesIO(z.read(pkls[0])))
            up.persistent_load = persistent_load
            obj = up.load()
        except CheckpointError:
            raise
        except Exception as e:  # corrupt or hostile pickle: one line naming the file
            raise CheckpointError(path, f"cannot read {pkls[0]}: {type(e).__name__}: {e}") from None
        if torchscript and isinstance(obj, OpaqueObject):
            sd = _module_state_dict(obj, _parse_module_classes(z, prefix))
            if not sd:
                raise CheckpointError(path, "a TorchScript archive with no readable weights (its modules' state is "
                                            "not a plain attribute dict)")
            return sd
        return obj


def read_pickle_file(path) -> Any:
    """The object stored in a ``.pth`` / ``.pt`` / ``.bin`` file (zip or legacy format), without running its code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "not found")
    if path.is_dir():
        raise CheckpointError(path, "is a directory, expected a checkpoint file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(path, "empty file (0 bytes)")
    if is_zip(path):
        return read_zip_archive(path)
    try:  # torch's legacy (non-zip) format: plain tensors and containers only
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except Exception as e:
        raise CheckpointError(path, f"not a PyTorch checkpoint: neither a zip archive nor a readable pickle ({size} "
                                    f"bytes; {type(e).__name__}: {e})") from None
