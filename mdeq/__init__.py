"""MDEQ: multiscale deep equilibrium models, solvers and implicit differentiation (torch only)."""

from mdeq.deq.equilibrium import DEQStats, solve_equilibrium
from mdeq.deq.options import DEQOptions

__all__ = ["DEQOptions", "DEQStats", "solve_equilibrium"]
