"""The import rule: xclip_kernels <- xclip.model <- xclip.config/runtime <- xclip.data <- xclip.engine <- xclip.apps.

Every module of ``xclip/`` is read with ``ast`` (imports at module level and
inside functions alike). A module may import only from its own layer or the
layers below it, and the units of ``xclip`` (``config``, ``runtime``,
``model``, ``data``, ``engine``, ``apps``, ...) must not import each other in
a cycle. The unit tests at the bottom show the checker failing on synthetic
graphs.
"""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lowest first. A module belongs to the layer of the longest prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernels", ("xclip_kernels",)),
    ("model", ("xclip.model",)),
    ("core", ("xclip.config", "xclip.runtime")),
    ("data", ("xclip.data",)),
    ("engine", ("xclip.engine",)),
    # The commands; plus the deprecated aliases of old import paths, which may point anywhere below.
    ("apps", ("xclip.apps", "xclip.cli", "xclip.__main__", "xclip.bench", "xclip._compat", "xclip.train",
              "xclip.eval")),
]
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}
# Modules placed by their exact name only. ``xclip/__init__.py`` re-exports the model alone,
# so ``import xclip`` is a model-layer import (and the root must import nothing higher).
EXACT = {"xclip": "model"}


def layer_of(module: str) -> str | None:
    if module in EXACT:
        return EXACT[module]
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = name, len(p)
    return best


def unit_of(module: str) -> str:
    """``xclip.engine.trainer`` -> ``xclip.engine``; ``xclip`` -> ``xclip``; ``xclip_kernels.x`` -> ``xclip_kernels``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "xclip" and len(parts) > 1 else parts[0]


def module_files(root: str, package: str) -> dict[str, str]:
    """``{"xclip.engine.trainer": path, ...}`` for every .py under ``root/package``."""
    out = {}
    base = os.path.join(root, package)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            if not fn.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(dirpath, fn), root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = os.path.join(dirpath, fn)
    return out


def imports_of(module: str, path: str, known: set[str]) -> list[tuple[str, int]]:
    """Every project module ``module`` imports (absolute or relative, any depth in the file), with its line."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = os.path.basename(path) == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:
                sub = f"{base}.{a.name}"
                found.append((sub if sub in known else base, node.lineno))
    return [(m, line) for m, line in found if m.split(".")[0] in ("xclip", "xclip_kernels")]


def check_graph(edges: list[tuple[str, str, str]], layer=layer_of) -> list[str]:
    """Violations in ``[(importer, imported, where)]``: unplaced modules, imports reaching up, unit cycles."""
    problems = []
    for src, dst, where in edges:
        ls, ld = layer(src), layer(dst)
        if ls is None or ld is None:
            problems.append(f"{where}: {src if ls is None else dst} belongs to no layer (add it to LAYERS)")
        elif RANK[ld] > RANK[ls]:
            problems.append(f"{where}: {src} ({ls}) imports {dst} ({ld}), a higher layer")
    graph: dict[str, set[str]] = {}
    for src, dst, _ in edges:
        a, b = unit_of(src), unit_of(dst)
        if a != b and not (a == "xclip" or b == "xclip"):  # the package root is a re-export facade
            graph.setdefault(a, set()).add(b)
    problems += [f"import cycle between {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    out, state = [], {}

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                out.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    return out


def project_edges() -> list[tuple[str, str, str]]:
    files = module_files(REPO, "xclip")
    known = set(files) | set(module_files(REPO, "xclip_kernels"))
    edges = []
    for mod, path in sorted(files.items()):
        for dst, line in imports_of(mod, path, known):
            edges.append((mod, dst, f"{os.path.relpath(path, REPO)}:{line}"))
    return edges


def test_every_xclip_module_imports_downward_only():
    edges = project_edges()
    assert len(edges) > 50, "the walk found too few imports; is it reading the package?"
    problems = check_graph(edges)
    assert not problems, "\n".join(problems)


def test_function_level_imports_are_seen():
    """The trainer imports the data layer inside a function too; the walk must report that line."""
    path = os.path.join(REPO, "xclip", "engine", "trainer.py")
    tree = ast.parse(open(path).read())
    inner = {n.lineno for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
             for n in ast.walk(f) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("xclip")}
    seen = {line for _, line in imports_of("xclip.engine.trainer", path, set(module_files(REPO, "xclip")))}
    assert inner, "expected a function-level project import in the trainer"
    assert inner <= seen


# ----------------------------------------------------------------------------- the checker can fail
def test_checker_flags_an_import_reaching_up():
    edges = [("xclip.data.dataset", "xclip.engine.trainer", "dataset.py:3")]
    problems = check_graph(edges)
    assert len(problems) == 1 and ("xclip.data.dataset (data) imports xclip.engine.trainer (engine)" in problems[0])


def test_checker_flags_a_cycle_between_units():
    # config and runtime share a layer, so only the cycle check can catch this one
    edges = [("xclip.config", "xclip.runtime", "config.py:1"), ("xclip.runtime", "xclip.config", "runtime.py:9")]
    problems = check_graph(edges)
    assert problems == ["import cycle between xclip.config -> xclip.runtime -> xclip.config"]


def test_checker_flags_an_unplaced_module():
    problems = check_graph([("xclip.newthing", "xclip.model", "newthing.py:1")])
    assert problems and "belongs to no layer" in problems[0]


def test_checker_accepts_downward_imports():
    edges = [("xclip.apps.eval", "xclip.engine.evaluate", "a"), ("xclip.engine.trainer", "xclip.data.build", "b"),
             ("xclip.data.build", "xclip.config", "c"), ("xclip.model.model", "xclip_kernels.nn", "d"),
             ("xclip.engine.trainer", "xclip", "e")]
    assert check_graph(edges) == []


@pytest.mark.parametrize("src, text, expected", [
    ("xclip.engine.trainer", "from . import checkpoint as c\n", "xclip.engine.checkpoint"),
    ("xclip.engine.trainer", "def f():\n    from ..apps import cli\n", "xclip.apps.cli"),
    ("xclip.engine.trainer", "def f():\n    import xclip.apps.eval\n", "xclip.apps.eval"),
    ("xclip.engine.trainer", "from xclip.data import build_dataset\n", "xclip.data"),
])
def test_imports_of_resolves_relative_and_nested(tmp_path, src, text, expected):
    p = tmp_path / "m.py"
    p.write_text(text)
    known = {"xclip.engine.checkpoint", "xclip.apps.cli", "xclip.apps.eval", "xclip.data"}
    assert [m for m, _ in imports_of(src, str(p), known)] == [expected]
