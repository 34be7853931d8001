"""Solver loops without a host sync per iteration: same iterates as the host-checked solvers, O(1)
syncs per solve (plus one per ``stop_check_every`` evaluations), forward and adjoint."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from mdeq.deq.equilibrium import solve_equilibrium
from mdeq.deq.options import DEQOptions
from mdeq.solvers import get_solver
from tests.mdeq.solver_reference import STAT_FIELDS, cases, record

pytestmark = pytest.mark.usefixtures("single_thread")

REFERENCE = torch.load(Path(__file__).parent / "data" / "solver_reference.pt", weights_only=True)
CASES = sorted(cases())
FLOAT_LISTS = ("residual_trace", "branch_residuals")


def _same_stats(got: dict, want: dict) -> None:
    for field in STAT_FIELDS:
        if field in FLOAT_LISTS:
            assert got[field] == pytest.approx(want[field], rel=1e-12, nan_ok=True), field
        elif isinstance(want[field], float):
            assert got[field] == pytest.approx(want[field], rel=1e-12, nan_ok=True), field
        else:
            assert got[field] == want[field], field


def test_the_reference_covers_every_case():
    assert sorted(REFERENCE) == CASES


@pytest.mark.parametrize("name", CASES)
def test_checking_every_evaluation_gives_the_recorded_iterates_and_statistics(name):
    got, want = record(name, stop_check_every=1), REFERENCE[name]
    assert got["iterates"].shape == want["iterates"].shape
    torch.testing.assert_close(got["iterates"], want["iterates"], rtol=1e-12, atol=0)
    torch.testing.assert_close(got["z"], want["z"], rtol=1e-12, atol=0)
    _same_stats(got, want)


@pytest.mark.parametrize("every", [3, 64])
@pytest.mark.parametrize("name", CASES)
def test_checking_every_k_evaluations_returns_the_same_solution(name, every):
    got, want = record(name, stop_check_every=every), REFERENCE[name]
    calls, reference_calls = got["iterates"].shape[0], want["iterates"].shape[0]
    # the first reference_calls iterates are the same; at most every - 1 more are evaluated and ignored
    assert reference_calls <= calls < reference_calls + every
    torch.testing.assert_close(got["iterates"][:reference_calls], want["iterates"], rtol=1e-12, atol=0)
    torch.testing.assert_close(got["z"], want["z"], rtol=1e-12, atol=0)
    _same_stats(got, want)


class SyncCounter:
    """Counts the tensor methods that make the host wait for the device (item, tolist, cpu, numpy, bool,
    float, int): on CPU nothing waits, but each is a sync point on CUDA."""

    NAMES = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self):
        originals = {name: getattr(torch.Tensor, name) for name in self.NAMES}

        def wrap(original):
            def counted(*args, **kwargs):
                self.count += 1
                return original(*args, **kwargs)
            return counted

        for name, original in originals.items():
            setattr(torch.Tensor, name, wrap(original))
        try:
            yield self
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)


def _syncs_of_solve(name: str, max_iter: int, every: int) -> tuple[int, int]:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 16, generator=gen) * 0.05
    z0 = torch.zeros(3, 16)
    counter = SyncCounter()
    with counter.counting():
        _, stats = get_solver(name)(lambda z: z @ weight.T + 1.0, z0, max_iter=max_iter, tol=1e-30,
                                    branch_sizes=[10, 6], stop_check_every=every)
    assert stats.nfe == max_iter  # tolerance 0: every solve runs to its cap
    return counter.count, stats.nfe


@pytest.mark.parametrize("name", ["broyden", "anderson", "fixed_point"])
def test_a_solve_syncs_a_constant_number_of_times_whatever_its_length(name):
    short, _ = _syncs_of_solve(name, 6, every=1000)
    long, _ = _syncs_of_solve(name, 30, every=1000)
    assert long == short <= 2
    # reading the stop flag every 4 evaluations adds exactly one sync per 4 evaluations
    checked, _ = _syncs_of_solve(name, 30, every=4)
    assert checked == short + 30 // 4


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn(16, 16, generator=gen, dtype=torch.float64) * 0.3)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.weight.T + x)


def _syncs_of_training_solve(max_iter: int) -> tuple[int, int, int, int]:
    f = _Linear()
    x = torch.randn(3, 16, dtype=torch.float64, requires_grad=True)
    options = DEQOptions(f_tol=1e-30, b_tol=1e-30, f_max_iter=max_iter, b_max_iter=max_iter, stop_check_every=1000,
                         state_dtype=torch.float64)
    forward, backward = SyncCounter(), SyncCounter()
    with forward.counting():
        z, stats = solve_equilibrium(f, torch.zeros(3, 16, dtype=torch.float64), (x,), options=options,
                                     branch_sizes=[10, 6])
    loss = z.square().sum()
    with backward.counting():
        loss.backward()
    return forward.count, backward.count, stats.nfe, stats.b_nfe


def test_forward_and_adjoint_solves_sync_a_constant_number_of_times():
    f_short, b_short, nfe_short, b_nfe_short = _syncs_of_training_solve(5)
    f_long, b_long, nfe_long, b_nfe_long = _syncs_of_training_solve(25)
    assert (nfe_short, b_nfe_short, nfe_long, b_nfe_long) == (5, 5, 25, 25)
    assert f_long == f_short <= 2 and b_long == b_short <= 2
