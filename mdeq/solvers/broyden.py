"""Limited-memory ("good") Broyden's method for z = f(z), batched per sample.

We solve g(z) = f(z) - z = 0 with an inverse-Jacobian estimate H = -I + U^T V, where U and V hold at
most ``history`` rank-1 pairs (rows of (B, m, D) buffers). When the buffer is full the oldest pair is
dropped (ring buffer), so the solver's memory is 2·B·m·D numbers whatever ``max_iter`` is; the
released MDEQ code kept one pair per iteration. The first step is a plain fixed-point step
(H = -I), there is no line search, and the lowest-residual iterate per sample is returned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mdeq.solvers.base import ResidualTracker, SolverStats, check_common, work_dtype
from mdeq.solvers.lowrank import combine_rows, dot_rows


def broyden(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, max_iter: int, tol: float,
            stop_mode: str = "rel", history: int = 8, state_dtype: torch.dtype = torch.float32,
            branch_sizes: Sequence[int] | None = None, protect_factor: float = 1e3,
            ) -> tuple[torch.Tensor, SolverStats]:
    """Find z = f(z) from z0 (B, D); see mdeq.solvers.base for the shared signature."""
    check_common(max_iter, tol, history)
    tracker = ResidualTracker(z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                              branch_sizes=branch_sizes, protect_factor=protect_factor)
    dtype = work_dtype(z0)
    batch, dim = z0.shape
    z = z0.to(dtype)
    gz = f(z).to(dtype) - z  # (B, D) residual g(z)
    if tracker.observe(z, gz + z) or max_iter == 1:
        return tracker.result()
    slots = min(history, max_iter - 1)  # pairs ever needed: one per step after the first
    us = torch.zeros(batch, slots, dim, dtype=state_dtype, device=z0.device)  # (B, m, D)
    vs = torch.zeros_like(us)  # (B, m, D)
    n_pairs = 0
    step_dir = gz  # -H g with H = -I: the plain fixed-point step
    for k in range(1, max_iter):
        z = z + step_dir
        gz_new = f(z).to(dtype) - z
        dg = gz_new - gz  # (B, D)
        gz = gz_new
        if tracker.observe(z, gz + z) or k == max_iter - 1:
            break
        slot = (k - 1) % slots
        if n_pairs == slots:
            us[:, slot].zero_()  # drop the oldest pair before using H for the update
            vs[:, slot].zero_()
        n_pairs = min(n_pairs + 1, slots)
        # good Broyden: H += (dz - H dg)(dz^T H) / (dz^T H dg), with dz = step_dir
        v = _rmatvec(us, vs, n_pairs, step_dir)  # (B, D) = dz^T H
        h_dg = _matvec(us, vs, n_pairs, dg)  # (B, D) = H dg
        denom = torch.linalg.vecdot(v, dg)  # (B,)
        safe = denom.abs() > 1e-30
        u = (step_dir - h_dg) / torch.where(safe, denom, torch.ones_like(denom))[:, None]
        us[:, slot] = torch.where(safe[:, None], u, 0.0)
        vs[:, slot] = torch.where(safe[:, None], v, 0.0)
        step_dir = _matvec(us, vs, n_pairs, gz).neg_()  # -H g
    return tracker.result(buffer_bytes=us.nbytes + vs.nbytes)


def _matvec(us: torch.Tensor, vs: torch.Tensor, n: int, x: torch.Tensor) -> torch.Tensor:
    """H x = -x + U^T (V x) for x (B, D)."""
    return combine_rows(us, n, dot_rows(vs, n, x), out=x.neg())


def _rmatvec(us: torch.Tensor, vs: torch.Tensor, n: int, x: torch.Tensor) -> torch.Tensor:
    """x^T H = -x + (x^T U^T) V for x (B, D)."""
    return combine_rows(vs, n, dot_rows(us, n, x), out=x.neg())
