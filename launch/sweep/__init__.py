"""Sweeps over config keys as nested MLflow runs (``mdeq sweep``), with a summary table and plots."""

from launch.sweep.runner import SweepResult, run_sweep
from launch.sweep.spec import SweepPoint, SweepSpec, expand_points, load_sweep

__all__ = ["SweepPoint", "SweepResult", "SweepSpec", "expand_points", "load_sweep", "run_sweep"]
