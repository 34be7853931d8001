"""Jacobian regularisation (Bai et al., ICML 2021) and a spectral-radius estimate for diagnostics."""

from __future__ import annotations

import hashlib

import torch


def jac_reg_drawn(prob: float, seed: int, index: int) -> bool:
    """Whether training forward ``index`` adds the Jacobian term: True with probability ``prob``.

    A pure function of ``(seed, index)`` (a hash, no RNG state), so every rank of a data-parallel
    job draws the same and they all run the same extra backward, or none does.
    """
    if prob >= 1.0 or prob <= 0.0:
        return prob >= 1.0
    digest = hashlib.sha256(f"mdeq-jac-reg:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < prob


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


def spectral_radius(f, z: torch.Tensor, f_args: tuple = (), iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Power-method estimate of the spectral radius of J_f at z, per sample: (B,).

    Iterates v <- v^T J / ||v^T J|| with vector-Jacobian products through one f evaluation (no
    parameter gradients). A diagnostic: below 1 means fixed-point iteration contracts near z; for a
    dominant complex pair the estimate oscillates around |lambda|, so read it as an order of magnitude.
    """
    generator = torch.Generator(device=z.device).manual_seed(seed)
    with torch.enable_grad():
        z_in = z.detach().requires_grad_()
        z_out = f(z_in, *f_args)
        v = torch.randn(z.shape, generator=generator, device=z.device, dtype=z_out.dtype)
        v = v / torch.linalg.vector_norm(v, dim=1, keepdim=True)
        estimate = torch.zeros(z.shape[0], device=z.device, dtype=torch.float32)
        for _ in range(iters):
            (vjp,) = torch.autograd.grad(z_out, z_in, v, retain_graph=True)
            norm = torch.linalg.vector_norm(vjp.float(), dim=1)  # (B,)
            estimate = norm
            v = (vjp / norm.clamp_min(1e-30)[:, None].to(vjp.dtype)).to(z_out.dtype)
    return estimate.detach()
