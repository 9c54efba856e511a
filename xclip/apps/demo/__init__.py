"""``xclip demo``: synthetic moving-shape videos, training, evaluation, report (see :mod:`.demo`)."""

from .demo import DEMO_CONFIG, demo_config, main, run_demo
from .demo_data import ShapesSpec, generate_dataset

__all__ = ["DEMO_CONFIG", "demo_config", "run_demo", "main", "ShapesSpec", "generate_dataset"]
