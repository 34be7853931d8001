"""Limited-memory ("good") Broyden's method for z = f(z), batched per sample.

We solve g(z) = f(z) - z = 0 with an inverse-Jacobian estimate H = -I + U^T V, where U and V hold at
most ``history`` rank-1 pairs (rows of (B, m, D) buffers in the state dtype). When the buffer is full
the oldest pair is dropped (ring buffer), so the solver's memory is 2·B·m·D numbers whatever
``max_iter`` is; the released MDEQ code kept one pair per iteration. The first step is a plain
fixed-point step (H = -I), there is no line search, and the lowest-residual iterate per sample is
returned.

Cost per iteration beyond f: two products with H (four passes over the buffers). H_old g_old is
known from the previous step (it is -dz), so H_old dg = H_old g_new + dz needs no extra pass, and
H_new g_new = H_old g_new + u (v . g_new) reuses H_old g_new.
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
    fz = f(z).to(dtype)
    g = fz - z  # (B, D) residual g(z)
    if tracker.observe(z, fz, g) or max_iter <= 2:
        if max_iter == 2 and not tracker.converged and not tracker.protective_break:
            z = fz
            tracker.observe(z, f(z).to(dtype))
        return tracker.result()
    slots = min(history, max_iter - 2)  # pairs ever formed: one per step after the first, bar the last
    us = torch.zeros(batch, slots, dim, dtype=state_dtype, device=z0.device)  # (B, m, D)
    vs = torch.zeros_like(us)  # (B, m, D)
    n_pairs = 0
    dz = g  # -H g with H = -I: the plain fixed-point step
    for k in range(1, max_iter):
        z = z + dz
        fz = f(z).to(dtype)
        g_new = fz - z
        if tracker.observe(z, fz, g_new) or k == max_iter - 1:
            break
        slot = (k - 1) % slots
        h_g_old = dz.neg()  # H g_old, with every pair currently stored
        if n_pairs == slots:  # drop the oldest pair: take its term out of H g_old, then clear it
            coeff = torch.linalg.vecdot(vs[:, slot].to(dtype), g)  # (B,)
            h_g_old.sub_(us[:, slot].to(dtype) * coeff[:, None])
            us[:, slot].zero_()
            vs[:, slot].zero_()
        else:
            n_pairs += 1
        h_g_new = _matvec(us, vs, n_pairs, g_new)  # (B, D) H g_new, before the update
        v = _rmatvec(us, vs, n_pairs, dz)  # (B, D) dz^T H
        dg = g_new - g
        h_dg = h_g_new - h_g_old  # H dg
        denom = torch.linalg.vecdot(v, dg)  # (B,) dz^T H dg
        safe = denom.abs() > 1e-30  # a degenerate step skips its update instead of dividing by ~0
        keep = safe.to(dtype)[:, None]  # (B, 1): 0 zeroes a skipped sample's pair (all finite here)
        u = (dz - h_dg).div_(torch.where(safe, denom, 1.0)[:, None]).mul_(keep)
        v = v.mul_(keep)
        us[:, slot] = u
        vs[:, slot] = v
        # good Broyden: H_new = H + u v^T, so H_new g_new = H g_new + u (v . g_new)
        dz = h_g_new.addcmul_(u, torch.linalg.vecdot(v, g_new)[:, None]).neg_()
        g = g_new
    return tracker.result(buffer_bytes=us.nbytes + vs.nbytes)


def _matvec(us: torch.Tensor, vs: torch.Tensor, n: int, x: torch.Tensor) -> torch.Tensor:
    """H x = -x + U^T (V x) for x (B, D)."""
    return combine_rows(us, n, dot_rows(vs, n, x), out=x.neg())


def _rmatvec(us: torch.Tensor, vs: torch.Tensor, n: int, x: torch.Tensor) -> torch.Tensor:
    """x^T H = -x + (x^T U^T) V for x (B, D)."""
    return combine_rows(vs, n, dot_rows(us, n, x), out=x.neg())
