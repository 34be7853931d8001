"""Solvers by name (``deq.f_solver`` / ``deq.b_solver``); an unknown name lists the known ones."""

from __future__ import annotations

from mdeq.errors import MDEQError
from mdeq.solvers.anderson import anderson
from mdeq.solvers.base import SolverFn
from mdeq.solvers.broyden import broyden
from mdeq.solvers.fixed_point import fixed_point

_SOLVERS: dict[str, SolverFn] = {"broyden": broyden, "anderson": anderson, "fixed_point": fixed_point}


def register_solver(name: str, solver: SolverFn) -> None:
    """Add a solver under ``name`` (it must follow the signature in mdeq.solvers.base)."""
    _SOLVERS[name] = solver


def get_solver(name: str) -> SolverFn:
    """The solver registered as ``name``."""
    if name not in _SOLVERS:
        raise MDEQError(f"solver {name!r} is unknown; known solvers: {', '.join(list_solvers())}")
    return _SOLVERS[name]


def list_solvers() -> list[str]:
    """Registered solver names, sorted."""
    return sorted(_SOLVERS)
