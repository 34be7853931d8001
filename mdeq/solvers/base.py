"""The one signature every fixed-point solver shares, its statistics, and residual bookkeeping.

A solver is a function::

    solve(f, z0, *, max_iter, tol, stop_mode="rel", history=8, state_dtype=torch.float32,
          branch_sizes=None, protect_factor=1e3, **solver_specific) -> (z_best, SolverStats)

``f`` maps a (B, D) tensor to a (B, D) tensor; the solver looks for z = f(z) independently per
sample (no statistic mixes samples except the stopping rule, which waits for every sample). The
iterate and all reductions are kept in fp32 (fp64 when z0 is fp64); only the large history buffers
(Broyden's low-rank factors, Anderson's past iterates) use ``state_dtype``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mdeq.errors import MDEQError

SolverFn = Callable[..., tuple[torch.Tensor, "SolverStats"]]


@dataclass
class SolverStats:
    """What one solve did. Residuals are per-sample norms averaged over the batch."""

    nfe: int  # f evaluations used
    residual_trace: list[float]  # mean stop-mode residual after each f evaluation
    abs_residual: float  # mean ||f(z)-z|| of the returned iterate
    rel_residual: float  # mean ||f(z)-z|| / ||f(z)|| of the returned iterate
    branch_residuals: list[float] = field(default_factory=list)  # per branch, in stop mode
    lowest_step: int = 0  # 1-based f evaluation with the lowest mean residual
    converged: bool = False  # every sample reached tol
    protective_break: bool = False  # stopped because the residual exploded or went non-finite
    nonfinite: bool = False  # f returned inf/nan at some iterate
    buffer_bytes: int = 0  # bytes of the solver's history buffers (the memory bound)


def work_dtype(z0: torch.Tensor) -> torch.dtype:
    """Precision of the iterate and of every reduction: fp64 stays fp64, the rest is fp32."""
    return torch.float64 if z0.dtype == torch.float64 else torch.float32


class ResidualTracker:
    """Per-sample residuals, the lowest-residual iterate per sample, stopping and divergence.

    One host sync per f evaluation (a single small ``tolist``) decides whether to stop.
    """

    def __init__(self, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str,
                 branch_sizes: Sequence[int] | None, protect_factor: float) -> None:
        if stop_mode not in ("abs", "rel"):
            raise MDEQError(f"stop_mode={stop_mode!r} is unknown; use abs or rel")
        if z0.dim() != 2:
            raise MDEQError(f"a solver takes a flat (batch, dim) state, got shape {tuple(z0.shape)}")
        batch, dim = z0.shape
        self.branch_sizes = list(branch_sizes) if branch_sizes else [dim]
        if sum(self.branch_sizes) != dim:
            raise MDEQError(f"branch_sizes {self.branch_sizes} sum to {sum(self.branch_sizes)}, state dim is {dim}")
        self.tol, self.rel = tol, stop_mode == "rel"
        self.protect_factor = protect_factor
        dtype = work_dtype(z0)
        self.best_z = z0.to(dtype).clone()  # (B, D)
        self.best_fz = torch.zeros_like(self.best_z)  # (B, D): f at best_z, for branch residuals
        self.best_res = torch.full((batch,), math.inf, dtype=dtype, device=z0.device)  # stop-mode
        self.best_abs = torch.full_like(self.best_res, math.inf)
        self.best_rel = torch.full_like(self.best_res, math.inf)
        self.trace: list[float] = []
        self.nfe = 0
        self.first = math.nan
        self.protective_break = self.nonfinite = self.converged = False

    def observe(self, z: torch.Tensor, fz: torch.Tensor) -> bool:
        """Record f(z) for iterate z (both (B, D), work dtype); return True when the solve must stop."""
        self.nfe += 1
        abs_res = torch.linalg.vector_norm(fz - z, dim=1)  # (B,)
        rel_res = abs_res / (torch.linalg.vector_norm(fz, dim=1) + 1e-12)
        res = rel_res if self.rel else abs_res
        improved = res < self.best_res  # nan compares False: a non-finite iterate is never "best"
        torch.where(improved[:, None], z, self.best_z, out=self.best_z)
        torch.where(improved[:, None], fz, self.best_fz, out=self.best_fz)
        torch.where(improved, res, self.best_res, out=self.best_res)
        torch.where(improved, abs_res, self.best_abs, out=self.best_abs)
        torch.where(improved, rel_res, self.best_rel, out=self.best_rel)
        mean_res, worst_best = torch.stack([res.mean(), self.best_res.max()]).tolist()  # one sync
        self.trace.append(mean_res)
        if self.nfe == 1:
            self.first = mean_res
        if not math.isfinite(mean_res):
            self.nonfinite = self.protective_break = True
            return True
        if worst_best < self.tol:
            self.converged = True
            return True
        if self.nfe > 1 and mean_res > self.protect_factor * max(self.first, 1e-30):
            self.protective_break = True
            return True
        return False

    def result(self, buffer_bytes: int = 0) -> tuple[torch.Tensor, SolverStats]:
        """The lowest-residual iterate per sample and the statistics of the solve."""
        finite = [r for r in self.trace if math.isfinite(r)]
        lowest = 1 + self.trace.index(min(finite)) if finite else 0
        diff = self.best_fz - self.best_z
        branch = []
        for d, fz in zip(diff.split(self.branch_sizes, dim=1), self.best_fz.split(self.branch_sizes, dim=1)):
            num = torch.linalg.vector_norm(d, dim=1)
            branch.append(num / (torch.linalg.vector_norm(fz, dim=1) + 1e-12) if self.rel else num)
        branch_means = torch.stack([b.mean() for b in branch]).tolist() if self.nfe else []
        abs_mean, rel_mean = torch.stack([self.best_abs.mean(), self.best_rel.mean()]).tolist()
        stats = SolverStats(
            nfe=self.nfe, residual_trace=self.trace, abs_residual=abs_mean, rel_residual=rel_mean,
            branch_residuals=branch_means, lowest_step=lowest, converged=self.converged,
            protective_break=self.protective_break, nonfinite=self.nonfinite, buffer_bytes=buffer_bytes,
        )
        return self.best_z, stats


def check_common(max_iter: int, tol: float, history: int) -> None:
    """Raise MDEQError for caps and tolerances no solver can use."""
    if max_iter < 1:
        raise MDEQError(f"max_iter must be >= 1, got {max_iter}")
    if history < 1:
        raise MDEQError(f"history must be >= 1, got {history}")
    if not tol > 0:
        raise MDEQError(f"tol must be > 0, got {tol}")
