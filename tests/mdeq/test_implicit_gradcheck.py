"""The implicit gradient is the gradient: float64 checks against finite differences and backprop."""

from __future__ import annotations

import pytest
import torch

from mdeq.deq.options import DEQOptions

pytestmark = pytest.mark.usefixtures("single_thread")

TIGHT = dict(f_solver="broyden", b_solver="broyden", f_max_iter=80, b_max_iter=80, f_tol=1e-13, b_tol=1e-13,
             stop_mode="abs", history=30, state_dtype=torch.float64)


def _loss(model, images: torch.Tensor) -> torch.Tensor:
    logits = model(images)  # (B, classes)
    return (logits * torch.linspace(-1, 1, logits.shape[1], dtype=logits.dtype)).sum() + logits.pow(2).sum()


def _flat_grads(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def test_implicit_gradient_matches_central_finite_differences(small_mdeq):
    model = small_mdeq
    model.deq_options = DEQOptions(**TIGHT)
    torch.manual_seed(1)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    params = [p for p in model.parameters() if p.requires_grad]
    loss = _loss(model, images)
    assert model.last_stats.converged and model.last_stats.abs_residual < 1e-11
    grads = torch.autograd.grad(loss, params + [images])
    assert model.last_stats.b_converged
    # directional derivatives along random directions: all parameters at once, then the input
    directions = [torch.randn_like(p) for p in params]
    analytic_params = sum((g * d).sum() for g, d in zip(grads[:-1], directions)).item()
    eps = 1e-7
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(eps * d)
        plus = _loss(model, images).item()
        for p, d in zip(params, directions):
            p.sub_(2 * eps * d)
        minus = _loss(model, images).item()
        for p, d in zip(params, directions):
            p.add_(eps * d)
    numeric_params = (plus - minus) / (2 * eps)
    assert abs(numeric_params - analytic_params) <= 1e-4 * abs(analytic_params)

    direction = torch.randn_like(images)
    analytic_input = (grads[-1] * direction).sum().item()
    with torch.no_grad():
        numeric_input = (_loss(model, images + eps * direction).item()
                         - _loss(model, images - eps * direction).item()) / (2 * eps)
    assert abs(numeric_input - analytic_input) <= 1e-4 * abs(analytic_input)


def test_implicit_gradient_matches_long_unrolled_backprop(small_mdeq):
    model = small_mdeq
    torch.manual_seed(2)
    images = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    params = [p for p in model.parameters() if p.requires_grad]
    model.deq_options = DEQOptions(**TIGHT)
    implicit = _flat_grads(torch.autograd.grad(_loss(model, images), params + [images]))
    # ordinary backprop through 80 plain f applications from zeros (contraction ~0.65: converged)
    model.deq_options = DEQOptions(**{**TIGHT, "grad_mode": "unrolled"})
    unrolled = _flat_grads(torch.autograd.grad(_loss(model, images), params + [images]))
    assert model.last_stats.nfe == 80 and model.last_stats.abs_residual < 1e-12
    assert ((implicit - unrolled).norm() / unrolled.norm()).item() < 1e-8
