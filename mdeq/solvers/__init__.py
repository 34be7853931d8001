"""Fixed-point solvers behind one signature (see base.py) and a registry by name."""

from mdeq.solvers.base import SolverStats
from mdeq.solvers.registry import get_solver, list_solvers, register_solver

__all__ = ["SolverStats", "get_solver", "list_solvers", "register_solver"]
