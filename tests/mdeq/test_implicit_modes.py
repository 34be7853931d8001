"""Gradient modes, Jacobian regularisation, spectral radius and mixed precision of solve_equilibrium."""

from __future__ import annotations

import pytest
import torch

from mdeq.deq.equilibrium import solve_equilibrium
from mdeq.deq.jacobian import jacobian_frobenius_estimate, spectral_radius
from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError
from mdeq.registry import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


class LinearMap(torch.nn.Module):
    """f(z, x) = W z + x with a symmetric W of known spectrum (float64)."""

    def __init__(self, dim: int = 12, radius: float = 0.6, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        basis, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        self.eigenvalues = torch.linspace(-radius, radius * 0.9, dim, dtype=torch.float64)
        self.weight = torch.nn.Parameter(basis @ torch.diag(self.eigenvalues) @ basis.T)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return z @ self.weight.T + x


def _grads(model, images, labels):
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


def test_unrolled_mode_is_ordinary_backprop_through_k_steps():
    f = LinearMap()
    x = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    z, stats = solve_equilibrium(f, torch.zeros(2, 12, dtype=torch.float64), (x,),
                                 options=DEQOptions(unrolled_steps=3), branch_sizes=[12], mode="unrolled")
    manual = torch.zeros(2, 12, dtype=torch.float64)
    for _ in range(3):
        manual = f(manual, x)
    assert stats.nfe == 3 and torch.allclose(z, manual)
    (gx,) = torch.autograd.grad(z.sum(), x)
    (mx,) = torch.autograd.grad(manual.sum(), x)
    assert torch.allclose(gx, mx)


def test_implicit_gradient_of_a_linear_map_is_the_closed_form():
    f = LinearMap()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    options = DEQOptions(f_tol=1e-12, b_tol=1e-12, f_max_iter=60, b_max_iter=60, state_dtype=torch.float64)
    z, stats = solve_equilibrium(f, torch.zeros(3, 12, dtype=torch.float64), (x,), options=options,
                                 branch_sizes=[8, 4])
    weights = torch.randn(3, 12, dtype=torch.float64)
    (gx,) = torch.autograd.grad((z * weights).sum(), x)
    # z* = (I - W)^-1 x  =>  dL/dx = (I - W)^-T dL/dz*
    expected = torch.linalg.solve(torch.eye(12, dtype=torch.float64) - f.weight.detach().T, weights.T).T
    assert stats.converged and stats.b_converged and stats.b_nfe > 1
    assert torch.allclose(gx, expected, atol=1e-9)


def test_phantom_gradient_approximates_the_implicit_gradient(small_mdeq):
    model = small_mdeq
    torch.manual_seed(3)
    images, labels = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 7])
    model.deq_options = DEQOptions(f_tol=1e-10, b_tol=1e-10, f_max_iter=40, b_max_iter=40,
                                   state_dtype=torch.float64)
    implicit = _grads(model, images, labels)
    model.deq_options = DEQOptions(f_tol=1e-10, f_max_iter=40, grad_mode="phantom", phantom_steps=8,
                                   phantom_damping=1.0, state_dtype=torch.float64)
    phantom = _grads(model, images, labels)
    assert model.last_stats.b_nfe == 0  # no adjoint solve in phantom mode
    assert _cosine(phantom, implicit) > 0.99


def test_jacobian_regulariser_is_added_with_its_weight_and_reaches_the_parameters():
    f = LinearMap(dim=12).train()
    x = torch.randn(4, 12, dtype=torch.float64)
    options = DEQOptions(jac_reg_weight=2.0, jac_reg_prob=1.0, f_tol=1e-10, state_dtype=torch.float64)
    z, stats = solve_equilibrium(f, torch.zeros(4, 12, dtype=torch.float64), (x,), options=options,
                                 branch_sizes=[12])
    assert stats.jac_loss is not None and stats.jac_loss.requires_grad
    (grad,) = torch.autograd.grad(stats.jac_loss, f.weight)
    assert grad.abs().sum() > 0
    options.jac_reg_prob = 0.0
    _, stats = solve_equilibrium(f, torch.zeros(4, 12, dtype=torch.float64), (x,), options=options,
                                 branch_sizes=[12])
    assert stats.jac_loss is None


def test_hutchinson_estimate_matches_the_frobenius_norm():
    f = LinearMap(dim=12)
    z_in = torch.zeros(8, 12, dtype=torch.float64, requires_grad=True)
    z_out = f(z_in, torch.zeros_like(z_in))
    torch.manual_seed(0)
    estimate = jacobian_frobenius_estimate(z_out, z_in, samples=400).item()
    exact = (f.weight.detach() ** 2).sum().item() / 12  # ||J||_F^2 per sample / D
    assert estimate == pytest.approx(exact, rel=0.1)


def test_spectral_radius_estimate_of_a_known_spectrum():
    f = LinearMap(dim=12, radius=0.6)
    x = torch.randn(2, 12, dtype=torch.float64)
    rho = spectral_radius(f, torch.zeros(2, 12, dtype=torch.float64), (x,), iters=200)
    assert torch.allclose(rho.double(), torch.full((2,), 0.6, dtype=torch.float64), rtol=0.02)


def test_bf16_solve_residual_is_within_twice_fp32_at_the_recipe_cap():
    residuals = {}
    for name, compute in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = create_model("tiny", dropout=0.0).train()  # stock init: the cap binds, as in training
        model.deq_options = DEQOptions(f_max_iter=8, b_max_iter=8, compute_dtype=compute,
                                       state_dtype=torch.bfloat16 if compute else torch.float32)
        with torch.no_grad():
            model(torch.randn(4, 3, 16, 16))
        assert model.last_stats.nfe == 8
        residuals[name] = model.last_stats.rel_residual
    assert residuals["bf16"] <= 2 * residuals["fp32"]


def test_bf16_implicit_gradient_is_close_to_fp32(make_contractive_mdeq):
    torch.manual_seed(1)
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    grads = {}
    for name, compute, state in (("fp32", None, torch.float32), ("bf16", torch.bfloat16, torch.bfloat16)):
        model = make_contractive_mdeq(torch.float32)
        model.deq_options = DEQOptions(f_max_iter=12, b_max_iter=12, compute_dtype=compute, state_dtype=state)
        grads[name] = _grads(model, images, labels)
    assert _cosine(grads["bf16"], grads["fp32"]) >= 0.99


def test_options_reject_unknown_names_with_the_valid_ones():
    with pytest.raises(MDEQError, match="known solvers"):
        DEQOptions(f_solver="newton")
    with pytest.raises(MDEQError, match="implicit, unrolled, phantom"):
        DEQOptions(grad_mode="adjoint")
    with pytest.raises(MDEQError, match="equilibrium or unrolled"):
        solve_equilibrium(LinearMap(), torch.zeros(1, 12, dtype=torch.float64), (torch.zeros(1, 12),),
                          options=DEQOptions(), branch_sizes=[12], mode="explicit")
