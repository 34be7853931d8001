"""The one signature every fixed-point solver shares, its statistics, and residual bookkeeping.

A solver is a function::

    solve(f, z0, *, max_iter, tol, stop_mode="rel", history=8, state_dtype=torch.float32,
          branch_sizes=None, protect_factor=1e3, stop_check_every=1, **solver_specific)
        -> (z_best, SolverStats)

``f`` maps a (B, D) tensor to a (B, D) tensor; the solver looks for z = f(z) independently per
sample (no statistic mixes samples except the stopping rule, which waits for every sample). The
iterate and all reductions are kept in fp32 (fp64 when z0 is fp64); only the large history buffers
(Broyden's low-rank factors, Anderson's past iterates) use ``state_dtype``.

No solver loop waits on the host per iteration: the stop test and the statistics stay on the
device and the host reads the stop flag every ``stop_check_every`` f evaluations (see
ResidualTracker); iterates, the returned z and the statistics do not depend on it.
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
    evaluations_past_stop: int = 0  # f calls made after the stop condition held (not in nfe; see ResidualTracker)


def work_dtype(z0: torch.Tensor) -> torch.dtype:
    """Precision of the iterate and of every reduction: fp64 stays fp64, the rest is fp32."""
    return torch.float64 if z0.dtype == torch.float64 else torch.float32


class ResidualTracker:
    """Per-sample residuals, the lowest-residual iterate per sample, stopping and divergence.

    The initial guess z0 counts only as a fallback: the returned iterate is the lowest-residual one
    among the iterates after z0 (z0 itself only when no later iterate of that sample is finite, or
    when the solve stopped at the first evaluation), as in the released Broyden.

    Everything stays on the tensors' device: the stop test (converged / non-finite / diverged) is
    evaluated into device flags after every f evaluation, and the host reads them only every
    ``stop_check_every`` evaluations (one sync each); the traces go to a (max_iter, 3 + branches)
    device buffer fetched once, in :meth:`result`. Evaluations made after the stop condition held
    (at most ``stop_check_every - 1``) change nothing: the best iterate, the flags and the count of
    evaluations are frozen at the evaluation that met it, so the result equals a solve that checks
    after every evaluation; only the extra f calls are spent (``SolverStats.evaluations_past_stop``).

    Keeps per-branch squared norms of f(z)-z and f(z) for the best iterate (B, branches), so the
    per-branch residuals need no copy of f(z).
    """

    def __init__(self, z0: torch.Tensor, *, max_iter: int, tol: float, stop_mode: str,
                 branch_sizes: Sequence[int] | None, protect_factor: float, stop_check_every: int = 1) -> None:
        if stop_mode not in ("abs", "rel"):
            raise MDEQError(f"stop_mode={stop_mode!r} is unknown; use abs or rel")
        if z0.dim() != 2:
            raise MDEQError(f"a solver takes a flat (batch, dim) state, got shape {tuple(z0.shape)}")
        if stop_check_every < 1:
            raise MDEQError(f"stop_check_every must be >= 1, got {stop_check_every}")
        batch, dim = z0.shape
        self.branch_sizes = list(branch_sizes) if branch_sizes else [dim]
        if sum(self.branch_sizes) != dim:
            raise MDEQError(f"branch_sizes {self.branch_sizes} sum to {sum(self.branch_sizes)}, state dim is {dim}")
        self.tol, self.rel = tol, stop_mode == "rel"
        self.protect_factor = protect_factor
        self.max_iter, self.check_every = max_iter, stop_check_every
        dtype, device = work_dtype(z0), z0.device
        self.best_z = z0.to(dtype).clone()  # (B, D)
        self.best_res = torch.full((batch,), math.inf, dtype=dtype, device=device)  # stop-mode
        nb = len(self.branch_sizes)
        self.best_diff_sq = torch.zeros(batch, nb, dtype=dtype, device=device)  # ||f(z)-z||^2 per branch
        self.best_f_sq = torch.zeros(batch, nb, dtype=dtype, device=device)  # ||f(z)||^2 per branch
        # per evaluation: batch means of [stop-mode, abs, rel, stop-mode per branch]
        self.rows = torch.full((max_iter, 3 + nb), math.nan, dtype=dtype, device=device)
        self.flags = torch.zeros(3, dtype=torch.bool, device=device)  # non-finite, converged, protective break
        self.stopped = torch.zeros((), dtype=torch.bool, device=device)
        self.used = torch.zeros((), dtype=torch.int64, device=device)  # evaluations up to the stop
        self.first = torch.zeros((), dtype=dtype, device=device)  # batch-mean residual of evaluation 1
        self.nfe = 0  # f evaluations made (host count, includes those past the stop)
        self.protective_break = self.nonfinite = self.converged = False  # host copies, set by result()

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

        Returns True when the host has read that the solve must stop (converged, diverged or
        non-finite); it reads the device flags only every ``stop_check_every`` evaluations.
        """
        self.nfe += 1
        diff = fz - z if diff is None else diff
        diff_sq, f_sq = self._branch_sq(diff), self._branch_sq(fz)  # (B, nb) each
        abs_res = diff_sq.sum(1).sqrt()  # (B,)
        rel_res = abs_res / (f_sq.sum(1).sqrt() + 1e-12)
        res = rel_res if self.rel else abs_res
        active = ~self.stopped  # () bool: this evaluation counts
        if self.nfe == 2:
            # the initial guess is only a fallback: the first finite iterate after it replaces it
            # whatever its residual. Otherwise a solve whose residual grows (the adjoint of a
            # non-contractive f, from zeros, in abs mode) returns z0 = 0: a zero implicit gradient.
            improved = torch.isfinite(res) & active
        else:
            improved = (res < self.best_res) & active  # nan compares False: never "best"
        torch.where(improved[:, None], z, self.best_z, out=self.best_z)
        torch.where(improved, res, self.best_res, out=self.best_res)
        torch.where(improved[:, None], diff_sq, self.best_diff_sq, out=self.best_diff_sq)
        torch.where(improved[:, None], f_sq, self.best_f_sq, out=self.best_f_sq)
        per_sample = torch.cat([torch.stack([res, abs_res, rel_res], 1), self._branch_res(diff_sq, f_sq)], 1)
        row = self.rows[self.nfe - 1]
        torch.mean(per_sample, 0, out=row)
        mean_res = row[0]
        # the stop rule, in order: non-finite, else every sample converged, else diverged
        nonfinite = ~torch.isfinite(mean_res)
        converged = (self.best_res.max() < self.tol) & ~nonfinite
        if self.nfe == 1:
            self.first = mean_res.clone()
            diverged = nonfinite
        else:
            diverged = nonfinite | ((mean_res > self.protect_factor * self.first.clamp_min(1e-30)) & ~converged)
        self.flags |= torch.stack([nonfinite, converged, diverged]) & active
        self.used += active
        self.stopped = self.flags.any()
        if self.nfe % self.check_every == 0:
            return bool(self.stopped)  # the one host sync of this block of evaluations
        return False

    def stop_requested(self) -> bool:
        """Whether the stop condition held at some evaluation so far (one host sync)."""
        return bool(self.stopped)

    def result(self, buffer_bytes: int = 0) -> tuple[torch.Tensor, SolverStats]:
        """The lowest-residual iterate per sample and the statistics of the solve (one host sync)."""
        branch = self._branch_res(self.best_diff_sq, self.best_f_sq)  # (B, nb)
        never = torch.isinf(self.best_res)[:, None]  # a sample with no finite iterate at all
        branch = torch.where(never, math.nan, branch)
        abs_res = torch.where(never[:, 0], math.nan, self.best_diff_sq.sum(1).sqrt())
        rel_res = abs_res / (self.best_f_sq.sum(1).sqrt() + 1e-12)
        reached = (self.best_res < self.tol).to(abs_res.dtype).mean()
        nb = len(self.branch_sizes)
        summary = torch.cat([abs_res.mean()[None], rel_res.mean()[None], reached[None], self.flags.to(abs_res.dtype),
                             self.used.to(abs_res.dtype)[None], branch.mean(0), self.rows[: self.nfe].flatten()])
        values = summary.tolist()  # the solve's one fetch of statistics and traces
        abs_mean, rel_mean, converged_fraction, nonfinite, converged, protective, used = values[:7]
        branch_means, rows = values[7 : 7 + nb], values[7 + nb :]
        used = int(used)
        width = 3 + nb
        rows = [rows[i * width : (i + 1) * width] for i in range(used)]
        trace = [row[0] for row in rows]
        self.nonfinite, self.converged, self.protective_break = bool(nonfinite), bool(converged), bool(protective)
        first = 1 if len(trace) > 1 and any(math.isfinite(r) for r in trace[1:]) else 0
        finite = [r for r in trace[first:] if math.isfinite(r)]  # z0 is a fallback only (observe)
        lowest = 1 + trace.index(min(finite), first) if finite else 0
        stats = SolverStats(
            nfe=used, residual_trace=trace, abs_residual=abs_mean, rel_residual=rel_mean,
            branch_residuals=branch_means, lowest_step=lowest, converged=self.converged,
            protective_break=self.protective_break, nonfinite=self.nonfinite, buffer_bytes=buffer_bytes,
            converged_fraction=converged_fraction, hit_cap=used >= self.max_iter and not self.converged,
            branch_trace=[row[3:] for row in rows], abs_trace=[row[1] for row in rows],
            rel_trace=[row[2] for row in rows], evaluations_past_stop=self.nfe - used,
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
