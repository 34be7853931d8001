"""Anderson acceleration (type II, difference form) for z = f(z), batched per sample.

Keeps the last ``history`` differences of iterates dX_i = x_{i+1} - x_i and of residuals
dG_i = g_{i+1} - g_i (g = f(x) - x) in ring buffers of the state dtype, plus their Gram matrix
dG dG^T in fp32 (one new row per step). The next iterate is
    z + beta g - (dX + beta dG)^T gamma,   (dG dG^T + lambda s I) gamma = dG g,
s the mean diagonal of the Gram (so lambda is scale-free). Storing differences rather than the
iterates themselves keeps bf16 storage from rounding the iterate. The system is solved with
``torch.linalg.solve_ex`` (never raises); where it fails or gives non-finite values the sample takes
a plain fixed-point step instead, so a singular system never ends the solve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mdeq.solvers.base import ResidualTracker, SolverStats, check_common, work_dtype
from mdeq.solvers.lowrank import combine_rows, dot_rows


def anderson(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, max_iter: int, tol: float,
             stop_mode: str = "rel", history: int = 8, state_dtype: torch.dtype = torch.float32,
             branch_sizes: Sequence[int] | None = None, protect_factor: float = 1e3,
             stop_check_every: int = 1,
             lam: float = 1e-4, beta: float = 1.0) -> tuple[torch.Tensor, SolverStats]:
    """Find z = f(z) from z0 (B, D); see mdeq.solvers.base for the shared signature."""
    check_common(max_iter, tol, history)
    tracker = ResidualTracker(z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                              branch_sizes=branch_sizes, protect_factor=protect_factor,
                              stop_check_every=stop_check_every)
    dtype = work_dtype(z0)
    batch, dim = z0.shape
    slots = max(1, min(history, max_iter - 2))  # differences ever formed: one per step after the first
    dxs = torch.zeros(batch, slots, dim, dtype=state_dtype, device=z0.device)  # (B, m, D)
    dgs = torch.zeros_like(dxs)  # (B, m, D)
    gram = torch.zeros(batch, slots, slots, dtype=dtype, device=z0.device)  # (B, m, m)
    eye = torch.eye(slots, dtype=dtype, device=z0.device)
    z = z0.to(dtype)
    z_prev = g_prev = None
    n_pairs = 0
    for k in range(max_iter):
        fz = f(z).to(dtype)
        if tracker.observe(z, fz) or k == max_iter - 1:
            break
        g = fz - z  # (B, D)
        if z_prev is None:
            z_prev, g_prev = z, g
            z = z + beta * g
            continue
        slot = (k - 1) % slots
        n_pairs = min(n_pairs + 1, slots)
        dxs[:, slot] = z - z_prev
        dgs[:, slot] = g - g_prev
        z_prev, g_prev = z, g
        row = dot_rows(dgs, n_pairs, dgs[:, slot].to(dtype))  # (B, n): uses the stored (rounded) values
        gram[:, slot, :n_pairs] = row
        gram[:, :n_pairs, slot] = row
        gamma = _least_squares(gram[:, :n_pairs, :n_pairs], eye[:n_pairs, :n_pairs],
                               dot_rows(dgs, n_pairs, g), lam)  # (B, n)
        z = z + beta * g
        combine_rows(dxs, n_pairs, -gamma, out=z)
        combine_rows(dgs, n_pairs, -beta * gamma, out=z)
    return tracker.result(buffer_bytes=dxs.nbytes + dgs.nbytes)


def _least_squares(gram: torch.Tensor, eye: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """gamma (B, n) of the regularised normal equations; zero (fixed-point step) where that fails."""
    scale = torch.diagonal(gram, dim1=1, dim2=2).mean(-1).clamp_min(1e-30)  # (B,)
    system = gram + (lam * scale)[:, None, None] * eye
    gamma, info = torch.linalg.solve_ex(system, rhs.unsqueeze(-1))
    gamma = gamma.squeeze(-1)
    ok = (info == 0) & torch.isfinite(gamma).all(-1)
    return torch.where(ok[:, None], gamma, torch.zeros_like(gamma))
