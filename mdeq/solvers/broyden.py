"""Limited-memory ("good") Broyden's method for z = f(z), batched per sample.

We solve g(z) = f(z) - z = 0 with an inverse-Jacobian estimate H = -I + U^T V, where U and V hold at
most ``history`` rank-1 pairs (rows of (B, m, D) buffers in the state dtype). When the buffer is full
the oldest pair is dropped (ring buffer), so the solver's memory is 2·B·m·D numbers whatever
``max_iter`` is; the released MDEQ code kept one pair per iteration. The first step is a plain
fixed-point step (H = -I), there is no line search, and the lowest-residual iterate per sample is
returned.

Cost per iteration beyond f: four passes over the buffers (V g_new and U dz as inner products,
H g_new and dz^T H as one baddbmm each) and a handful of (B, D) passes. The update is written in
closed form so no H dg or u temporaries are formed: with s = dz and H g_old = -s (minus the
dropped pair's term), s - H dg = -(H g_new + u_old (v_old . g_old)); the denominator s^T H dg is
v . dg with dg formed explicitly (see the comment there). On CPU the (B, D) passes are
memory-bound, so every avoided temporary counts (figures in docs/solvers.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mdeq.solvers.base import ResidualTracker, SolverStats, check_common, work_dtype
from mdeq.solvers.lowrank import combine_rows_minus, dot_rows


def broyden(f: Callable[[torch.Tensor], torch.Tensor], z0: torch.Tensor, *, max_iter: int, tol: float,
            stop_mode: str = "rel", history: int = 8, state_dtype: torch.dtype = torch.float32,
            branch_sizes: Sequence[int] | None = None, protect_factor: float = 1e3,
            stop_check_every: int = 1,
            ) -> tuple[torch.Tensor, SolverStats]:
    """Find z = f(z) from z0 (B, D); see mdeq.solvers.base for the shared signature."""
    check_common(max_iter, tol, history)
    tracker = ResidualTracker(z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode,
                              branch_sizes=branch_sizes, protect_factor=protect_factor,
                              stop_check_every=stop_check_every)
    dtype = work_dtype(z0)
    batch, dim = z0.shape
    z = z0.to(dtype)
    fz = f(z).to(dtype)
    g = fz - z  # (B, D) residual g(z)
    if tracker.observe(z, fz, g) or max_iter <= 2:
        if max_iter == 2 and not tracker.stop_requested():
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
        drop = n_pairs == slots  # the ring is full: the oldest pair (in ``slot``) leaves H first
        if not drop:
            n_pairs += 1
        vg = dot_rows(vs, n_pairs, g_new)  # (B, n) V g_new
        ud = dot_rows(us, n_pairs, dz)  # (B, n) U dz
        if drop:
            c_old = torch.linalg.vecdot(vs[:, slot].to(dtype), g)  # (B,) v_old . g_old
            vg[:, slot] = 0.0  # H' = H without the oldest pair, in both products below
            ud[:, slot] = 0.0
        h_g_new = combine_rows_minus(us, n_pairs, vg, g_new)  # (B, D) H' g_new
        v = combine_rows_minus(vs, n_pairs, ud, dz)  # (B, D) dz^T H'
        v_g_new = torch.linalg.vecdot(v, g_new)  # (B,)
        # dz^T H' dg as v . (g_new - g), not v.g_new - v.g: near convergence g_new ~ g and the
        # difference of the two products cancels catastrophically
        denom = torch.linalg.vecdot(v, g_new - g)  # (B,)
        safe = denom.abs() > 1e-30  # a degenerate step skips its update instead of dividing by ~0
        scale = torch.where(safe, -1.0 / torch.where(safe, denom, 1.0), 0.0)[:, None]  # (B, 1)
        # t = -(dz - H' dg) = H' g_new + u_old c_old; the new pair is u = t * scale, v (zeroed if skipped)
        t = torch.addcmul(h_g_new, us[:, slot].to(dtype), c_old[:, None]) if drop else h_g_new
        torch.mul(t, scale, out=us[:, slot])
        torch.mul(v, safe.to(dtype)[:, None], out=vs[:, slot])
        # good Broyden: H_new g_new = H' g_new + u (v . g_new); the next step is its negative.
        # Without a dropped pair t is H' g_new itself, so that is one in-place multiply.
        if drop:
            dz = h_g_new.addcmul_(t, scale * v_g_new[:, None]).neg_()
        else:
            dz = h_g_new.mul_((scale * v_g_new[:, None]).add_(1.0).neg_())
        g = g_new
    return tracker.result(buffer_bytes=us.nbytes + vs.nbytes)
