"""SolverStats beyond the residual: converged fraction, cap, per-branch and abs/rel traces, adjoint too."""

from __future__ import annotations

import pytest
import torch

from mdeq.deq.equilibrium import solve_equilibrium
from mdeq.deq.options import DEQOptions
from mdeq.solvers import get_solver

pytestmark = pytest.mark.usefixtures("single_thread")

SOLVERS = ["broyden", "anderson", "fixed_point"]
BRANCHES = [5, 3]


def _block_problem(batch: int = 4, radius: float = 0.5, seed: int = 0):
    """f(z) = W z + b with W block-diagonal over BRANCHES, so each branch's residual is its own."""
    gen = torch.Generator().manual_seed(seed)
    dim = sum(BRANCHES)
    weight = torch.zeros(dim, dim, dtype=torch.float64)
    start = 0
    for size in BRANCHES:
        block = torch.randn(size, size, generator=gen, dtype=torch.float64)
        weight[start:start + size, start:start + size] = block * radius / torch.linalg.matrix_norm(block, 2)
        start += size
    bias = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return lambda z: z @ weight.T + bias


def _manual_residuals(fz: torch.Tensor, z: torch.Tensor, rel: bool):
    """(joint, abs, rel, per-branch) batch means of the residual fz - z, computed from scratch."""
    diff = fz - z
    abs_res = diff.norm(dim=1)
    rel_res = abs_res / (fz.norm(dim=1) + 1e-12)
    branch = [d.norm(dim=1) / (b.norm(dim=1) + 1e-12) if rel else d.norm(dim=1)
              for d, b in zip(diff.split(BRANCHES, 1), fz.split(BRANCHES, 1))]
    return ((rel_res if rel else abs_res).mean().item(), abs_res.mean().item(), rel_res.mean().item(),
            [b.mean().item() for b in branch])


@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
@pytest.mark.parametrize("name", SOLVERS)
def test_traces_hold_each_evaluated_iterate_and_end_at_the_returned_one(name, stop_mode):
    f = _block_problem()
    seen = []

    def recording(z):
        # the fourth evaluation is spoiled, so the trace's iterate is not every sample's best there
        fz = f(z) + (3.0 if len(seen) == 3 else 0.0)
        seen.append((z.clone(), fz.clone()))
        return fz

    z, stats = get_solver(name)(recording, torch.zeros(4, 8, dtype=torch.float64), max_iter=12, tol=1e-30,
                                stop_mode=stop_mode, branch_sizes=BRANCHES, state_dtype=torch.float64)
    assert len(stats.branch_trace) == len(stats.abs_trace) == len(stats.rel_trace) == stats.nfe == len(seen)
    for i, (z_i, fz_i) in enumerate(seen):
        joint, abs_mean, rel_mean, branch = _manual_residuals(fz_i, z_i, stop_mode == "rel")
        assert stats.residual_trace[i] == pytest.approx(joint, rel=1e-9)
        assert stats.abs_trace[i] == pytest.approx(abs_mean, rel=1e-9)
        assert stats.rel_trace[i] == pytest.approx(rel_mean, rel=1e-9)
        assert stats.branch_trace[i] == pytest.approx(branch, rel=1e-9)
    # branch_residuals: the same per-branch quantity, at the returned iterate
    assert stats.branch_residuals == pytest.approx(_manual_residuals(f(z), z, stop_mode == "rel")[3], rel=1e-9)
    assert stats.branch_trace[3][0] > 10 * stats.branch_residuals[0]


@pytest.mark.parametrize("name", SOLVERS)
def test_cap_and_converged_fraction(name):
    f = _block_problem()
    z0 = torch.zeros(4, 8, dtype=torch.float64)
    _, capped = get_solver(name)(f, z0, max_iter=4, tol=1e-12, branch_sizes=BRANCHES, state_dtype=torch.float64)
    assert capped.hit_cap and capped.nfe == 4 and not capped.converged and capped.converged_fraction == 0.0
    _, done = get_solver(name)(f, z0, max_iter=300, tol=1e-10, branch_sizes=BRANCHES, state_dtype=torch.float64)
    assert done.converged and not done.hit_cap and done.converged_fraction == 1.0
    # converging on the very last evaluation the cap allows is not hitting the cap
    _, just = get_solver(name)(f, z0, max_iter=done.nfe, tol=1e-10, branch_sizes=BRANCHES,
                               state_dtype=torch.float64)
    assert just.converged and just.nfe == done.nfe and not just.hit_cap


def test_converged_fraction_counts_the_samples_below_tol():
    f = _block_problem(batch=4)
    exact_z = torch.zeros(4, 8, dtype=torch.float64)
    for _ in range(400):
        exact_z = f(exact_z)
    # samples 0 and 1 start at their fixed point, 2 and 3 far away; 3 evaluations cannot reach 1e-9
    z0 = torch.cat([exact_z[:2], torch.full((2, 8), 50.0, dtype=torch.float64)])
    _, stats = get_solver("fixed_point")(f, z0, max_iter=3, tol=1e-9, branch_sizes=BRANCHES)
    assert stats.converged_fraction == 0.5 and stats.hit_cap and not stats.converged


class _Linear(torch.nn.Module):
    def __init__(self, f) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.inner = f

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z) * self.scale


def test_the_adjoint_solve_reports_the_same_statistics_in_deq_stats():
    module = _Linear(_block_problem())
    options = DEQOptions(f_tol=1e-12, b_tol=1e-12, f_max_iter=40, b_max_iter=5, state_dtype=torch.float64)
    z, stats = solve_equilibrium(module, torch.zeros(4, 8, dtype=torch.float64), options=options,
                                 branch_sizes=BRANCHES)
    assert stats.branch_trace and len(stats.branch_trace) == stats.nfe and len(stats.abs_trace) == stats.nfe
    assert stats.converged_fraction == 1.0 and not stats.hit_cap
    z.square().sum().backward()
    b = stats.b_solver_stats
    assert b is not None and stats.b_nfe == b.nfe == 5
    assert stats.b_hit_cap and stats.b_converged_fraction == b.converged_fraction < 1.0
    assert len(stats.b_branch_trace) == 5 and len(stats.b_branch_trace[0]) == 2
    assert stats.b_branch_residuals == b.branch_residuals and len(stats.b_abs_trace) == len(stats.b_rel_trace) == 5
    assert stats.b_trace == b.residual_trace
