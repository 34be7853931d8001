"""Solvers: one signature, registry errors, convergence, bounded memory, robustness, precision."""

from __future__ import annotations

import math

import pytest
import torch

from mdeq.errors import MDEQError
from mdeq.solvers import get_solver, list_solvers

pytestmark = pytest.mark.usefixtures("single_thread")

SOLVERS = ["broyden", "anderson", "fixed_point"]


def _linear_problem(dim: int = 60, batch: int = 3, radius: float = 0.8, seed: int = 0):
    """f(z) = W z + b with spectral radius ``radius``; returns f, its exact fixed point (B, D)."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5
    weight = weight * (radius / torch.linalg.eigvals(weight).abs().max().item())
    bias = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    exact = torch.linalg.solve(torch.eye(dim, dtype=torch.float64) - weight, bias.T).T
    return (lambda z: z @ weight.T.to(z.dtype) + bias.to(z.dtype)), exact


def test_registry_lists_solvers_and_rejects_unknown_names():
    assert set(SOLVERS) <= set(list_solvers())
    with pytest.raises(MDEQError, match="known solvers: anderson, broyden, fixed_point"):
        get_solver("newton")


@pytest.mark.parametrize("name", SOLVERS)
def test_each_solver_finds_the_exact_fixed_point(name):
    f, exact = _linear_problem()
    z, stats = get_solver(name)(f, torch.zeros_like(exact), max_iter=200, tol=1e-10, stop_mode="rel", history=20,
                                state_dtype=torch.float64, branch_sizes=[40, 20])
    assert stats.converged and stats.nfe < 200
    assert ((z - exact).norm() / exact.norm()).item() < 1e-8
    assert len(stats.branch_residuals) == 2 and max(stats.branch_residuals) < 1e-9
    assert stats.residual_trace[0] == pytest.approx(1.0)  # from zeros, f(0) - 0 = f(0): relative residual 1
    assert stats.rel_residual <= min(stats.residual_trace) + 1e-15


def test_broyden_and_anderson_need_fewer_evaluations_than_fixed_point_on_a_slow_contraction():
    f, exact = _linear_problem(radius=0.95)
    nfe = {}
    for name in SOLVERS:
        _, stats = get_solver(name)(f, torch.zeros_like(exact), max_iter=400, tol=1e-8, history=60,
                                    state_dtype=torch.float64)
        assert stats.converged
        nfe[name] = stats.nfe
    assert nfe["broyden"] < nfe["fixed_point"] / 2 and nfe["anderson"] < nfe["fixed_point"] / 2


def _dense_limited_broyden(f, z0: torch.Tensor, max_iter: int, history: int) -> list[torch.Tensor]:
    """Textbook good Broyden with explicit (D, D) inverse-Jacobian estimates, one sample at a time.

    H = -I + sum of the kept rank-1 pairs u v^T; before a new pair is formed in a full ring, the
    oldest leaves H (H'), then u = (s - H' y) / (s^T H' y), v = H'^T s, step = -(H' + u v^T) g.
    Returns every iterate z_1 .. z_{max_iter-1} (B, D) after the plain first step.
    """
    dim = z0.shape[1]
    eye = torch.eye(dim, dtype=z0.dtype)
    slots = min(history, max_iter - 2)
    pairs: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in range(z0.shape[0])]
    z, g = z0, f(z0) - z0
    dz, iterates = g, []
    for k in range(1, max_iter):
        z = z + dz
        g_new = f(z) - z
        iterates.append(z)
        if k == max_iter - 1:
            break
        steps = []
        for b in range(z.shape[0]):
            if len(pairs[b]) == slots:
                pairs[b].pop(0)
            h = -eye + sum((torch.outer(u, v) for u, v in pairs[b]), torch.zeros_like(eye))
            s, y = dz[b], g_new[b] - g[b]
            u = (s - h @ y) / (s @ h @ y)
            v = h.T @ s
            pairs[b].append((u, v))
            steps.append(-(h + torch.outer(u, v)) @ g_new[b])
        dz, g = torch.stack(steps), g_new
    return iterates


@pytest.mark.parametrize("history, max_iter", [(20, 12), (3, 12), (1, 6)])
def test_broyden_iterates_equal_the_dense_textbook_update(history, max_iter):
    # the solver writes the update in closed form without H dg or u temporaries (see its module
    # doc); every iterate must still be the textbook one, with and without pairs leaving the ring
    f, exact = _linear_problem(dim=30, radius=0.9)
    g_f = lambda z: torch.tanh(f(z))  # noqa: E731 - nonlinear, so the Jacobian changes along the path
    expected = _dense_limited_broyden(g_f, torch.zeros_like(exact), max_iter, history)
    seen = []

    def recording_f(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return g_f(z)

    _, stats = get_solver("broyden")(recording_f, torch.zeros_like(exact), max_iter=max_iter, tol=1e-14,
                                     history=history, state_dtype=torch.float64)
    assert stats.nfe == max_iter
    assert len(seen) == max_iter  # z0, then z_1 .. z_{max_iter-1}
    for got, want in zip(seen[1:], expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["broyden", "anderson"])
def test_history_bounds_solver_memory_whatever_the_cap(name):
    f, exact = _linear_problem(radius=0.5)
    sizes = []
    for cap in (12, 24, 48):
        z, stats = get_solver(name)(f, torch.zeros_like(exact, dtype=torch.float32), max_iter=cap, tol=1e-30,
                                    history=4)
        assert stats.nfe == cap  # tol 0 runs to the cap: the ring buffer wrapped many times
        sizes.append(stats.buffer_bytes)
    assert ((z.double() - exact).norm() / exact.norm()).item() < 1e-5  # dropping old pairs still converges
    assert sizes[0] == sizes[1] == sizes[2] == 2 * 4 * exact.numel() * 4  # 2 buffers x history x B x D fp32


@pytest.mark.parametrize("name", ["broyden", "anderson"])
def test_bf16_history_halves_the_buffers_and_still_converges(name):
    f, exact = _linear_problem(radius=0.8)
    z0 = torch.zeros_like(exact, dtype=torch.float32)
    _, full = get_solver(name)(f, z0, max_iter=40, tol=1e-30, history=8, state_dtype=torch.float32)
    z, half = get_solver(name)(f, z0, max_iter=40, tol=1e-30, history=8, state_dtype=torch.bfloat16)
    assert half.buffer_bytes * 2 == full.buffer_bytes
    # the iterate itself stays fp32: bf16 factors only slow the quasi-Newton model down a little
    assert half.rel_residual < 1e-4 and ((z.double() - exact).norm() / exact.norm()).item() < 1e-4


def test_anderson_survives_a_singular_least_squares_system():
    constant = torch.randn(2, 10)
    # f constant: every residual difference is identical -> the Gram matrix is rank one / singular
    z, stats = get_solver("anderson")(lambda z: constant.clone(), torch.zeros(2, 10), max_iter=10, tol=1e-6,
                                      lam=0.0)
    assert stats.converged and torch.allclose(z, constant)
    # exactly repeated iterates (zero differences) give an all-zero Gram matrix
    z, stats = get_solver("anderson")(lambda z: torch.zeros_like(z), torch.zeros(2, 10), max_iter=5,
                                      tol=1e-30, lam=0.0)
    assert torch.isfinite(z).all() and not stats.protective_break


@pytest.mark.parametrize("name", SOLVERS)
def test_non_finite_output_stops_the_solve_and_keeps_the_best_finite_iterate(name):
    f, exact = _linear_problem(radius=0.5)
    calls = {"n": 0}

    def breaks_at_six(z):
        calls["n"] += 1
        return f(z) * (math.nan if calls["n"] >= 6 else 1.0)

    z, stats = get_solver(name)(breaks_at_six, torch.zeros_like(exact), max_iter=50, tol=1e-14,
                                state_dtype=torch.float64)
    assert stats.nonfinite and stats.protective_break and not stats.converged
    assert stats.nfe == 6 and torch.isfinite(z).all()
    assert math.isfinite(stats.rel_residual) and stats.rel_residual == pytest.approx(min(stats.residual_trace[:5]))


@pytest.mark.parametrize("name", SOLVERS)
def test_divergence_triggers_the_protective_break_and_returns_the_lowest_residual_iterate(name):
    z0 = torch.zeros(2, 8)
    # g(z) = f(z) - z = 1 + z^2 has no root: no solver can converge
    z, stats = get_solver(name)(lambda z: z + 1.0 + z * z, z0, max_iter=200, tol=1e-8, stop_mode="abs",
                                protect_factor=1e3)
    assert torch.isfinite(z).all()
    if name == "fixed_point":  # z grows doubly exponentially: the break fires long before the cap
        assert stats.protective_break and stats.nfe < 20
    assert not stats.converged
    # z0 is a fallback only: the lowest-residual iterate after it is returned, even when z0 was lower
    assert stats.abs_residual == pytest.approx(min(stats.residual_trace[1:]))
    assert stats.lowest_step == 1 + stats.residual_trace.index(min(stats.residual_trace[1:]))
    assert stats.lowest_step >= 2


def test_the_stop_rule_waits_for_every_sample():
    f, exact = _linear_problem(radius=0.5, batch=2)
    # sample 1 starts at its fixed point, sample 0 far away: the solve must continue for sample 0
    z0 = torch.stack([torch.zeros(exact.shape[1], dtype=torch.float64), exact[1]])
    z, stats = get_solver("fixed_point")(f, z0, max_iter=100, tol=1e-10, state_dtype=torch.float64)
    assert stats.converged and stats.nfe > 10
    assert ((z - exact).norm() / exact.norm()).item() < 1e-9


def test_bad_arguments_raise_clear_errors():
    f, exact = _linear_problem()
    with pytest.raises(MDEQError, match="branch_sizes"):
        get_solver("broyden")(f, torch.zeros_like(exact), max_iter=5, tol=1e-3, branch_sizes=[1, 2])
    with pytest.raises(MDEQError, match="stop_mode"):
        get_solver("broyden")(f, torch.zeros_like(exact), max_iter=5, tol=1e-3, stop_mode="max")
    with pytest.raises(MDEQError, match="flat"):
        get_solver("anderson")(f, torch.zeros(2, 3, 4), max_iter=5, tol=1e-3)


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("cap", [1, 2, 3])
def test_tiny_caps_use_exactly_the_cap(name, cap):
    f, exact = _linear_problem(radius=0.5)
    z, stats = get_solver(name)(f, torch.zeros_like(exact), max_iter=cap, tol=1e-30, state_dtype=torch.float64)
    assert stats.nfe == cap and len(stats.residual_trace) == cap and torch.isfinite(z).all()
    assert stats.rel_residual == pytest.approx(min(stats.residual_trace))
