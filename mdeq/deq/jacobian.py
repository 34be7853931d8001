"""Jacobian regularisation (Bai et al., ICML 2021) and a spectral-radius estimate for diagnostics."""

from __future__ import annotations

import torch


def jacobian_frobenius_estimate(z_out: torch.Tensor, z_in: torch.Tensor, samples: int = 1) -> torch.Tensor:
    """Hutchinson estimate of ||J_f(z)||_F^2 / numel(z), differentiable (create_graph).

    ``z_out`` = f(z_in) (B, D) with ``z_in`` requiring grad; E_eps ||eps^T J||^2 = ||J||_F^2 for
    eps ~ N(0, I). Divided by the element count like the authors' code so gamma is size-free.
    """
    total = z_out.new_zeros((), dtype=torch.float32)
    for _ in range(samples):
        eps = torch.randn_like(z_out)
        (vjp,) = torch.autograd.grad(z_out, z_in, eps, retain_graph=True, create_graph=True)
        total = total + vjp.float().pow(2).sum()
    return total / (samples * z_in.numel())
