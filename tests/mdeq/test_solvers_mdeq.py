"""Solvers on the MDEQ's own f: the same fixed point, and quasi-Newton beats fixed-point iteration."""

from __future__ import annotations

import pytest
import torch

from mdeq.registry import create_model
from mdeq.solvers import get_solver

pytestmark = pytest.mark.usefixtures("single_thread")


def _mdeq_f(model, images):
    """(f as a (B, D) -> (B, D) callable, z0, branch sizes) for one batch of images."""
    injections = model.injection(model.stem(images))
    f_args = model.f.prepare(injections)
    layout = model.f.layout(injections[0])
    z0 = injections[0].new_zeros(images.shape[0], layout.total)
    return (lambda z: model.f(z, *f_args)), z0, layout.branch_sizes


@torch.no_grad()
def test_broyden_and_anderson_reach_the_same_fixed_point_of_an_mdeq(small_mdeq):
    model = small_mdeq
    f, z0, sizes = _mdeq_f(model, torch.randn(2, 3, 8, 8, dtype=torch.float64))
    solutions = {}
    for name in ("broyden", "anderson"):
        z, stats = get_solver(name)(f, z0, max_iter=60, tol=1e-11, stop_mode="abs", history=8,
                                    state_dtype=torch.float64, branch_sizes=sizes)
        assert stats.converged
        solutions[name] = z
    gap = (solutions["broyden"] - solutions["anderson"]).norm() / solutions["anderson"].norm()
    assert gap.item() < 1e-9


@torch.no_grad()
def test_broyden_needs_fewer_f_evaluations_than_fixed_point_on_the_stock_mdeq_f():
    torch.manual_seed(0)
    model = create_model("tiny", dropout=0.0).train()  # stock initialisation: f is not a contraction
    f, z0, sizes = _mdeq_f(model, torch.randn(4, 3, 16, 16))
    to_tol = {}
    for name in ("broyden", "fixed_point"):
        _, stats = get_solver(name)(f, z0, max_iter=24, tol=0.3, history=8, branch_sizes=sizes)
        to_tol[name] = stats.nfe if stats.converged else None
    # measured here: Broyden reaches a relative residual of 0.3 in ~9 evaluations; fixed-point
    # iteration stalls around 0.8 and never gets there
    assert to_tol["broyden"] is not None and to_tol["fixed_point"] is None


@pytest.mark.parametrize("model_name, res", [("cifar-small", 32), ("imagenet-small", 32)])
@torch.no_grad()
def test_broyden_ends_no_worse_than_fixed_point_at_equal_f_evaluations(model_name, res):
    # imagenet-small: 4 branches with downsampling fusion (the GPU report's model family), abs mode
    torch.manual_seed(0)
    model = create_model(model_name, dropout=0.0).train()
    f, z0, sizes = _mdeq_f(model, torch.randn(2, 3, res, res))
    final = {}
    for name in ("broyden", "fixed_point"):
        _, stats = get_solver(name)(f, z0, max_iter=12, tol=1e-30, stop_mode="abs", history=8, branch_sizes=sizes)
        assert stats.nfe == 12 and not stats.protective_break
        final[name] = stats.abs_residual
    assert final["broyden"] <= final["fixed_point"]


def test_implicit_backward_of_the_stock_mdeq_reaches_every_parameter_of_f():
    # At init the adjoint iteration grows (spectral radius > 1); the solver once returned its
    # initial guess g = 0 there (lowest abs residual), so f and the stem got exactly zero gradient.
    torch.manual_seed(0)
    model = create_model("cifar-small", dropout=0.0).train()
    model.deq_options.stop_mode = "abs"
    logits = model(torch.randn(2, 3, 32, 32))
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2])).backward()
    assert model.last_stats.b_nfe >= 2
    zero = [name for name, p in model.named_parameters()
            if not name.startswith("head") and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert zero == []
