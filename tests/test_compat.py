"""Old import paths (xclip.train.*, xclip.eval.*, xclip.cli) keep working, with a DeprecationWarning."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHECK = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as w:
    from xclip.train.trainer import train, Trainer
    from xclip.train.config import load_config, DEFAULTS
    from xclip.train import checkpoint, build_optimizer
    import xclip.eval.cli, xclip.eval.predict, xclip.eval.metrics
    from xclip.eval import evaluate, accuracy_topk
import xclip.engine.trainer, xclip.apps.eval, xclip.apps.predict, xclip.engine.checkpoint, xclip.config
assert train is xclip.engine.trainer.train and Trainer is xclip.engine.trainer.Trainer
assert load_config is xclip.config.load_config and checkpoint is xclip.engine.checkpoint
assert xclip.eval.cli is xclip.apps.eval and xclip.eval.predict is xclip.apps.predict
msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]
assert any("xclip.train is deprecated" in m for m in msgs), msgs
assert any("xclip.eval is deprecated" in m for m in msgs), msgs
from xclip.cli import main
from xclip.apps.cli import main as apps_main
assert main is apps_main
print("ok")
"""


def test_old_import_paths_still_work_and_warn():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _CHECK], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr


def test_new_layers_import_without_the_old_packages():
    """Importing the new modules never pulls the deprecated alias packages in."""
    code = ("import sys, xclip.apps.cli, xclip.apps.train, xclip.apps.eval, xclip.apps.predict, xclip.apps.demo, "
            "xclip.engine, xclip.data, xclip.config, xclip.runtime\n"
            "bad = [m for m in sys.modules if m.split('.')[:2] in (['xclip', 'train'], ['xclip', 'eval'])]\n"
            "assert not bad, bad\nprint('ok')")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stdout + p.stderr
