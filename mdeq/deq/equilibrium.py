"""``solve_equilibrium``: find z* = f(z*) and make it differentiable in the configured way.

Gradient modes (``options.grad_mode``):
- implicit: solve without grad, one ordinary differentiable module call ``f(z*, *f_args)``, and a
  backward hook on its output that solves the adjoint fixed point g = J_f(z*)^T g + dL/dz* with the
  backward solver and passes g on. Nothing of the forward iterations is kept. This construction (no
  autograd.Function taking parameters as inputs) is the one that survives DeepSpeed ZeRO-3, because
  both the forward step and its backward run through ordinary module calls and autograd.
- unrolled: ordinary backprop through ``f_max_iter`` plain f applications (memory grows with the cap).
- phantom: solve without grad, then ``phantom_steps`` damped steps z <- (1-l) z + l f(z) with grad
  (Geng et al., NeurIPS 2021).
``mode="unrolled"`` (warm-up, weight-tied model) applies f ``options.unrolled_steps`` times with
ordinary backprop, whatever ``grad_mode`` says.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from mdeq.deq.fastpath import compiled_f, configure_backends, stop_check_every
from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError
from mdeq.solvers.base import SolverStats
from mdeq.solvers.registry import get_solver


@dataclass
class DEQStats:
    """Statistics of one equilibrium solve; the implicit backward fills the ``b_*`` fields."""

    nfe: int  # f evaluations of the forward solve (or unrolled steps)
    residual_trace: list[float]  # mean stop-mode residual after each f evaluation
    branch_residuals: list[float]  # final stop-mode residual per branch
    abs_residual: float  # mean per-sample ||f(z)-z|| of the returned z*
    rel_residual: float  # mean per-sample ||f(z)-z|| / ||f(z)||
    lowest_step: int  # f evaluation with the lowest mean residual
    converged: bool  # every sample reached f_tol
    protective_break: bool  # solve stopped on divergence or a non-finite f output
    b_nfe: int = 0  # adjoint-map evaluations of the implicit backward (VJPs: b_nfe - 1, see the hook)
    b_residual: float = math.nan  # final stop-mode residual of the adjoint solve
    b_converged: bool = False
    jac_loss: torch.Tensor | None = None  # gamma * Hutchinson ||J_f||_F^2 / dim: add it to the loss
    solver_buffer_bytes: int = 0  # history buffers of the forward solver (the memory bound)
    b_trace: list[float] = field(default_factory=list)  # adjoint residual trace
    # the forward solve's counterparts of SolverStats (see mdeq.solvers.base for what each holds)
    converged_fraction: float = 0.0
    hit_cap: bool = False
    branch_trace: list[list[float]] = field(default_factory=list)
    abs_trace: list[float] = field(default_factory=list)
    rel_trace: list[float] = field(default_factory=list)
    # the same for the adjoint solve of the implicit backward, filled in by its hook
    b_converged_fraction: float = 0.0
    b_hit_cap: bool = False
    b_branch_residuals: list[float] = field(default_factory=list)
    b_branch_trace: list[list[float]] = field(default_factory=list)
    b_abs_trace: list[float] = field(default_factory=list)
    b_rel_trace: list[float] = field(default_factory=list)
    b_protective_break: bool = False
    b_solver_stats: SolverStats | None = None  # everything the adjoint solver reported


def solve_equilibrium(f: torch.nn.Module, z0: torch.Tensor, f_args: tuple = (), *, options: DEQOptions,
                      branch_sizes: Sequence[int], mode: str = "equilibrium",
                      ) -> tuple[torch.Tensor, DEQStats]:
    """Return (z (B, D), stats) for f called as ``f(z, *f_args)`` on the flat joint state z0 (B, D)."""
    if mode not in ("equilibrium", "unrolled"):
        raise MDEQError(f"solve_equilibrium mode={mode!r} is unknown; use equilibrium or unrolled")
    if z0.dim() != 2 or sum(branch_sizes) != z0.shape[1]:
        raise MDEQError(f"z0 must be (batch, sum(branch_sizes)={sum(branch_sizes)}), got {tuple(z0.shape)}")
    configure_backends(z0.device, cudnn_benchmark=options.cudnn_benchmark, tf32=options.tf32)
    fast_f = compiled_f(f, options.compile_f)
    step = _Step(fast_f, f_args, _compute_dtype(options.compute_dtype, z0.device.type), z0.dtype)
    if mode == "unrolled":
        return _unrolled(step, z0, options.unrolled_steps, branch_sizes)
    if options.grad_mode == "unrolled":
        return _unrolled(step, z0, options.f_max_iter, branch_sizes)
    with torch.no_grad(), _no_autocast(z0.device.type):
        z_star, f_stats = get_solver(options.f_solver)(
            step, z0.detach(), max_iter=options.f_max_iter, tol=options.f_tol, stop_mode=options.stop_mode,
            history=options.history, state_dtype=options.state_dtype, branch_sizes=branch_sizes,
            protect_factor=options.protect_factor,
            stop_check_every=stop_check_every(options.stop_check_every, z0.device),
            **_solver_kwargs(options.f_solver, options))
    stats = _stats_from(f_stats)
    z_star = z_star.to(z0.dtype)
    if not torch.is_grad_enabled():
        return z_star, stats
    if options.grad_mode == "phantom":
        z = z_star
        for _ in range(options.phantom_steps):
            z = torch.lerp(z, step(z), options.phantom_damping)
        return z, stats
    z_in = z_star.detach().requires_grad_()
    # the differentiable step is always the eager module call (ZeRO-3's parameter hooks see it)
    final_step = _Step(f, f_args, None if options.fp32_final_step else step.compute_dtype, z0.dtype)
    z_out = final_step(z_in)  # (B, D): the one differentiable f evaluation, an ordinary module call
    if not z_out.requires_grad:
        return z_out, stats  # nothing to differentiate (frozen f, no grad to z0)
    if f.training and options.jac_reg_weight > 0 and _jac_reg_drawn(options):
        from mdeq.deq.jacobian import jacobian_frobenius_estimate

        stats.jac_loss = options.jac_reg_weight * jacobian_frobenius_estimate(z_out, z_in)
    return _attach_adjoint_hook(z_out, z_in, options, stats, branch_sizes), stats


def _jac_reg_drawn(options: DEQOptions) -> bool:
    from mdeq.deq.jacobian import jac_reg_drawn

    if options.jac_reg_seed is None:
        return random.random() < options.jac_reg_prob
    return jac_reg_drawn(options.jac_reg_prob, options.jac_reg_seed, options.jac_reg_index)


def _compute_dtype(requested: torch.dtype | None, device_type: str) -> torch.dtype | None:
    """The autocast dtype of f: the requested one, else the caller's autocast (if any), else none."""
    if requested is not None:
        return None if requested in (torch.float32, torch.float64) else requested
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Solver arithmetic (norms, inner products, low-rank updates) never runs under autocast."""
    return torch.autocast(device_type=device_type, enabled=False)


class _Step:
    """f(z, *f_args) under autocast in ``compute_dtype`` (None: plain), returned as (B, D) ``out_dtype``."""

    def __init__(self, f: torch.nn.Module, f_args: tuple, compute_dtype: torch.dtype | None,
                 out_dtype: torch.dtype) -> None:
        self.f, self.f_args, self.out_dtype, self.compute_dtype = f, f_args, out_dtype, compute_dtype

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        device_type = z.device.type
        ctx = (torch.autocast(device_type=device_type, dtype=self.compute_dtype) if self.compute_dtype
               else torch.autocast(device_type=device_type, enabled=False))
        with ctx:
            out = self.f(z.to(self.out_dtype), *self.f_args)
        return out.to(self.out_dtype)


def _attach_adjoint_hook(z_out: torch.Tensor, z_in: torch.Tensor, options: DEQOptions, stats: DEQStats,
                         branch_sizes: Sequence[int]) -> torch.Tensor:
    """Return an alias of z_out whose backward replaces dL/dz* by the solution g of g = J^T g + dL/dz*.

    No reference cycle: the hook sits on a view of z_out (the alias), not on z_out itself, so nothing
    z_out owns points back at the closure; and the closure drops z_out / z_in once it has run. So
    z*, the f step's output and its graph die by reference counting as soon as the backward is done,
    not at the next garbage collection. One backward per forward: a second one through the same
    graph raises.
    """
    solver = get_solver(options.b_solver)
    refs = {"z_out": z_out, "z_in": z_in}  # cleared after the hook has run
    alias = z_out.view_as(z_out)

    def hook(grad: torch.Tensor) -> torch.Tensor:
        if not refs:
            raise MDEQError("the implicit backward of one forward pass ran twice (retain_graph?); "
                            "run the forward again before a second backward")
        out, inp = refs["z_out"], refs["z_in"]

        def adjoint_map(g: torch.Tensor) -> torch.Tensor:
            if g is start and start._version == 0:
                # the solvers evaluate the map first at the (untouched) zero start, where
                # J^T 0 = 0 exactly: that evaluation needs no VJP (one of b_max_iter saved)
                return grad_work.clone()
            (vjp,) = torch.autograd.grad(out, inp, g.to(out.dtype), retain_graph=True)
            return vjp.to(g.dtype) + grad_work

        grad_work = grad.detach().to(torch.float64 if grad.dtype == torch.float64 else torch.float32)
        start = torch.zeros_like(grad_work)
        with torch.enable_grad(), _no_autocast(grad.device.type):
            g, b_stats = solver(adjoint_map, start, max_iter=options.b_max_iter,
                                tol=options.b_tol, stop_mode=options.stop_mode, history=options.history,
                                state_dtype=options.state_dtype, branch_sizes=branch_sizes,
                                protect_factor=options.protect_factor,
                                stop_check_every=stop_check_every(options.stop_check_every, grad.device),
                                **_solver_kwargs(options.b_solver, options))
        refs.clear()
        stats.b_nfe = b_stats.nfe
        stats.b_residual = b_stats.rel_residual if options.stop_mode == "rel" else b_stats.abs_residual
        stats.b_converged = b_stats.converged
        stats.b_trace = b_stats.residual_trace
        stats.b_converged_fraction, stats.b_hit_cap = b_stats.converged_fraction, b_stats.hit_cap
        stats.b_branch_residuals, stats.b_branch_trace = b_stats.branch_residuals, b_stats.branch_trace
        stats.b_abs_trace, stats.b_rel_trace = b_stats.abs_trace, b_stats.rel_trace
        stats.b_protective_break, stats.b_solver_stats = b_stats.protective_break, b_stats
        return g.to(grad.dtype)

    alias.register_hook(hook)
    return alias


def _unrolled(step: _Step, z0: torch.Tensor, steps: int, branch_sizes: Sequence[int]
              ) -> tuple[torch.Tensor, DEQStats]:
    """Ordinary backprop through ``steps`` applications of f; residual of the last step."""
    z_prev, z = z0, z0
    for _ in range(steps):
        z_prev, z = z, step(z)
    with torch.no_grad():
        diff = z - z_prev
        abs_res = torch.linalg.vector_norm(diff, dim=1)
        rel_res = abs_res / (torch.linalg.vector_norm(z, dim=1) + 1e-12)
        branch = [(torch.linalg.vector_norm(d, dim=1) / (torch.linalg.vector_norm(b, dim=1) + 1e-12)).mean()
                  for d, b in zip(diff.split(list(branch_sizes), 1), z.split(list(branch_sizes), 1))]
        abs_mean, rel_mean, *branch_means = torch.stack([abs_res.mean(), rel_res.mean(), *branch]).tolist()
    stats = DEQStats(nfe=steps, residual_trace=[rel_mean], branch_residuals=branch_means, abs_residual=abs_mean,
                     rel_residual=rel_mean, lowest_step=steps, converged=False,
                     protective_break=not math.isfinite(abs_mean))
    return z, stats


def _stats_from(s: SolverStats) -> DEQStats:
    return DEQStats(nfe=s.nfe, residual_trace=s.residual_trace, branch_residuals=s.branch_residuals,
                    abs_residual=s.abs_residual, rel_residual=s.rel_residual, lowest_step=s.lowest_step,
                    converged=s.converged, protective_break=s.protective_break,
                    solver_buffer_bytes=s.buffer_bytes, converged_fraction=s.converged_fraction,
                    hit_cap=s.hit_cap, branch_trace=s.branch_trace, abs_trace=s.abs_trace, rel_trace=s.rel_trace)


def _solver_kwargs(name: str, options: DEQOptions) -> dict:
    """Solver-specific options from DEQOptions."""
    if name == "anderson":
        return {"lam": options.anderson_lambda, "beta": options.anderson_beta}
    if name == "fixed_point":
        return {"damping": options.fixed_point_damping}
    return {}
