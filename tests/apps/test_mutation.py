"""The curated mutation check (scripts/mutation_check.py): every planted bug is caught by the tests named for it.

``test_mutant_snippets_still_match`` takes seconds: a refactor that moves the code a mutant patches fails it
at once (re-point the mutant). ``test_every_mutant_is_caught`` runs the whole check (each mutant applied to a
temporary copy of the repository, its tests run there; about 8 min on 2 cores); it runs in the default suite,
so in CI (plain ``pytest -q``); deselect it locally with ``-k "not every_mutant"``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "mutation_check.py")


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_mutant_snippets_still_match():
    p = _run("--check-only", timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mutation_check_reports_a_surviving_mutant(monkeypatch, capsys):
    """The script itself can fail: a mutant whose tests cannot see it is reported NOT caught (exit 1)."""
    sys.path.insert(0, os.path.join(REPO, "scripts"))
    try:
        import mutation_check as mc
    finally:
        sys.path.remove(os.path.join(REPO, "scripts"))
    harmless = mc.Mutant("harmless", "xclip/model/model.py", "def drop_path(", "def drop_path(  ",
                         ("tests/model/test_model.py::test_logit_scale_init",), "whitespace only: no test can see it")
    stale = mc.Mutant("stale", "xclip/model/model.py", "this text is not in the file", "x", ("tests/model/test_model.py",),
                      "a snippet that does not match")
    monkeypatch.setattr(mc, "MUTANTS", [harmless, stale])
    assert mc.main(["--no-baseline"]) == 1
    out = capsys.readouterr()
    assert "harmless] NOT caught" in out.out and "STALE mutant stale" in out.err
    assert mc.missed_by(("tests/a.py::t",), ["tests/a.py::t[x]"]) == []
    assert mc.missed_by(("tests/a.py::t", "tests/b.py"), ["tests/a.py::t[x]"]) == ["tests/b.py"]


@pytest.mark.timeout(3000)
def test_every_mutant_is_caught():
    p = _run(timeout=2900)
    print(p.stdout[-8000:])
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-4000:]
