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
    lowest_step: int = 0  # 1-based f evaluation with the lowest mean residual (after z0, see ResidualTracker)
    converged: bool = False  # every sample reached tol
    protective_break: bool = False  # stopped because the residual exploded or went non-finite
    nonfinite: bool = False  # f returned inf/nan at some iterate
    buffer_bytes: int = 0  # bytes of the solver's history buffers (the memory bound)
    converged_fraction: float = 0.0  # fraction of samples whose lowest stop-mode residual is < tol
    hit_cap: bool = False  # used all max_iter f evaluations and not every sample reached tol
    # per f evaluation, one value per branch: the batch mean of each sample's stop-mode residual of
    # that branch's slice (||d_b|| / (||f_b|| + 1e-12) in rel mode, ||d_b|| in abs mode, d = f(z) - z)
    # for the iterate just evaluated. branch_residuals is the same quantity for the returned
    # (lowest-residual per sample) iterate, so branch_trace[-1] == branch_residuals whenever the last
    # iterate is every sample's best; residual_trace uses the joint norm over all branches instead.
    branch_trace: list[list[float]] = field(default_factory=list)
    abs_trace: list[float] = field(default_factory=list)  # batch-mean ||f(z)-z|| per f evaluation
    rel_trace: list[float] = field(default_factory=list)  # batch-mean ||f(z)-z|| / ||f(z)|| per f evaluation


def work_dtype(z0: torch.Tensor) -> torch.dtype:
    """Precision of the iterate and of every reduction: fp64 stays fp64, the rest is fp32."""
    return torch.float64 if z0.dtype == torch.float64 else torch.float32


class ResidualTracker:
    """Per-sample residuals, the lowest-residual iterate per sample, stopping and divergence.

    The initial guess z0 counts only as a fallback: the returned iterate is the lowest-residual one
    among the iterates after z0 (z0 itself only when no later iterate of that sample is finite, or
    when the solve stopped at the first evaluation), as in the released Broyden.

    Keeps per-branch squared norms of f(z)-z and f(z) for the best iterate (B, branches), so the
    per-branch residuals need no copy of f(z). One host sync per f evaluation (a single small
    ``tolist``) decides whether to stop.
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
        self.best_res = torch.full((batch,), math.inf, dtype=dtype, device=z0.device)  # stop-mode
        nb = len(self.branch_sizes)
        self.best_diff_sq = torch.zeros(batch, nb, dtype=dtype, device=z0.device)  # ||f(z)-z||^2 per branch
        self.best_f_sq = torch.zeros(batch, nb, dtype=dtype, device=z0.device)  # ||f(z)||^2 per branch
        self.max_iter = max_iter
        self.trace: list[float] = []
        self.abs_trace: list[float] = []
        self.rel_trace: list[float] = []
        self.branch_trace: list[list[float]] = []
        self.nfe = 0
        self.first = math.nan
        self.protective_break = self.nonfinite = self.converged = False

    def _branch_sq(self, x: torch.Tensor) -> torch.Tensor:
        """(B, branches): squared norms of each branch's slice of x (B, D)."""
        if len(self.branch_sizes) == 1:
            return torch.linalg.vecdot(x, x)[:, None]
        return torch.stack([torch.linalg.vecdot(part, part) for part in x.split(self.branch_sizes, dim=1)], 1)

    def _branch_res(self, diff_sq: torch.Tensor, f_sq: torch.Tensor) -> torch.Tensor:
        """(B, branches): stop-mode residual of each branch from its squared norms (B, branches)."""
        branch_abs = diff_sq.sqrt()
        return branch_abs / (f_sq.sqrt() + 1e-12) if self.rel else branch_abs

    def observe(self, z: torch.Tensor, fz: torch.Tensor, diff: torch.Tensor | None = None) -> bool:
        """Record f(z) for iterate z (B, D, work dtype; ``diff`` = fz - z if already at hand).

        Returns True when the solve must stop (converged, diverged or non-finite).
        """
        self.nfe += 1
        diff = fz - z if diff is None else diff
        diff_sq, f_sq = self._branch_sq(diff), self._branch_sq(fz)  # (B, nb) each
        abs_res = diff_sq.sum(1).sqrt()  # (B,)
        res = abs_res / (f_sq.sum(1).sqrt() + 1e-12) if self.rel else abs_res
        if self.nfe == 2:
            # the initial guess is only a fallback: the first finite iterate after it replaces it
            # whatever its residual. Otherwise a solve whose residual grows (the adjoint of a
            # non-contractive f, from zeros, in abs mode) returns z0 = 0: a zero implicit gradient.
            improved = torch.isfinite(res)
        else:
            improved = res < self.best_res  # nan compares False: a non-finite iterate is never "best"
        torch.where(improved[:, None], z, self.best_z, out=self.best_z)
        torch.where(improved, res, self.best_res, out=self.best_res)
        torch.where(improved[:, None], diff_sq, self.best_diff_sq, out=self.best_diff_sq)
        torch.where(improved[:, None], f_sq, self.best_f_sq, out=self.best_f_sq)
        rel_res = abs_res / (f_sq.sum(1).sqrt() + 1e-12) if not self.rel else res
        per_sample = torch.cat([torch.stack([res, abs_res, rel_res], 1), self._branch_res(diff_sq, f_sq)], 1)
        mean_res, worst_best, abs_mean, rel_mean, *branch_means = torch.cat(
            [per_sample.mean(0)[:1], self.best_res.max()[None], per_sample.mean(0)[1:]]).tolist()  # one sync
        self.trace.append(mean_res)
        self.abs_trace.append(abs_mean)
        self.rel_trace.append(rel_mean)
        self.branch_trace.append(branch_means)
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
        first = 1 if len(self.trace) > 1 and any(math.isfinite(r) for r in self.trace[1:]) else 0
        finite = [r for r in self.trace[first:] if math.isfinite(r)]  # z0 is a fallback only (observe)
        lowest = 1 + self.trace.index(min(finite), first) if finite else 0
        branch = self._branch_res(self.best_diff_sq, self.best_f_sq)  # (B, nb)
        never = torch.isinf(self.best_res)[:, None]  # a sample with no finite iterate at all
        branch = torch.where(never, math.nan, branch)
        abs_res = torch.where(never[:, 0], math.nan, self.best_diff_sq.sum(1).sqrt())
        rel_res = abs_res / (self.best_f_sq.sum(1).sqrt() + 1e-12)
        reached = (self.best_res < self.tol).to(abs_res.dtype).mean()
        abs_mean, rel_mean, converged_fraction, *branch_means = torch.cat(
            [abs_res.mean()[None], rel_res.mean()[None], reached[None], branch.mean(0)]).tolist()
        stats = SolverStats(
            nfe=self.nfe, residual_trace=self.trace, abs_residual=abs_mean, rel_residual=rel_mean,
            branch_residuals=branch_means, lowest_step=lowest, converged=self.converged,
            protective_break=self.protective_break, nonfinite=self.nonfinite, buffer_bytes=buffer_bytes,
            converged_fraction=converged_fraction, hit_cap=self.nfe >= self.max_iter and not self.converged,
            branch_trace=self.branch_trace, abs_trace=self.abs_trace, rel_trace=self.rel_trace,
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
