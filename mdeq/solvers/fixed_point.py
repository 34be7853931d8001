"""Damped fixed-point iteration z <- z + damping * (f(z) - z): the baseline every solver must beat."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mdeq.solvers.base import ResidualTracker, SolverStats, check_common, work_dtype


def fixed_point(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, max_iter: int, tol: float,
                stop_mode: str = "rel", history: int = 8, state_dtype: torch.dtype = torch.float32,
                branch_sizes: Sequence[int] | None = None, protect_factor: float = 1e3,
                stop_check_every: int = 1,
                damping: float = 1.0) -> tuple[torch.Tensor, SolverStats]:
    """Iterate f from z0 (B, D); ``history`` and ``state_dtype`` are unused (no buffers)."""
    check_common(max_iter, tol, history)
    tracker = ResidualTracker(z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                              branch_sizes=branch_sizes, protect_factor=protect_factor,
                              stop_check_every=stop_check_every)
    z = z0.to(work_dtype(z0))
    for _ in range(max_iter):
        fz = f(z).to(z.dtype)
        if tracker.observe(z, fz):
            break
        z = fz if damping == 1.0 else torch.lerp(z, fz, damping)
    return tracker.result(buffer_bytes=0)
