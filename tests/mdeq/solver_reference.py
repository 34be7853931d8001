"""Every iterate each solver evaluates on fixed problems, and what it returns: the solvers' behaviour
pinned so a rewrite of their loops (e.g. the device-side stop test) can be checked against it.

``python -m tests.mdeq.solver_reference OUT.pt`` records the cases with the solvers importable at the
time; tests/mdeq/data/solver_reference.pt was recorded with the solvers of the commit before the stop
test moved to the device (each checked the stop condition on the host after every f evaluation).
"""

from __future__ import annotations

import math
import sys

import torch

STAT_FIELDS = ("nfe", "residual_trace", "abs_residual", "rel_residual", "branch_residuals", "lowest_step",
               "converged", "protective_break", "nonfinite", "buffer_bytes")


def _linear(dim: int, batch: int, radius: float, seed: int, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(dim, dim, generator=gen, dtype=torch.float64) / dim**0.5
    weight = weight * (radius / torch.linalg.eigvals(weight).abs().max().item())
    bias = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    return (lambda z: z @ weight.T.to(z.dtype) + bias.to(z.dtype)), torch.zeros(batch, dim, dtype=dtype)


def _nan_from(f, call: int):
    calls = {"n": 0}

    def broken(z):
        calls["n"] += 1
        return f(z) * (math.nan if calls["n"] >= call else 1.0)

    return broken


def cases():
    """name -> (f, z0, solver keyword arguments); each problem is rebuilt fresh on every call."""
    out = {}
    for solver in ("broyden", "anderson", "fixed_point"):
        f, z0 = _linear(24, 3, 0.8, 0)
        out[f"{solver}/converges"] = (f, z0, dict(max_iter=80, tol=1e-9, stop_mode="rel", history=5,
                                                   state_dtype=torch.float64, branch_sizes=[16, 8]))
        f, z0 = _linear(24, 3, 0.95, 1)
        out[f"{solver}/cap_abs"] = (f, z0, dict(max_iter=11, tol=1e-30, stop_mode="abs", history=4,
                                                state_dtype=torch.float64, branch_sizes=[12, 12]))
        f, z0 = _linear(24, 3, 0.5, 2)
        out[f"{solver}/nonfinite"] = (_nan_from(f, 6), z0, dict(max_iter=50, tol=1e-14, state_dtype=torch.float64))
        out[f"{solver}/diverges"] = (lambda z: z + 1.0 + z * z, torch.zeros(2, 8, dtype=torch.float64),
                                     dict(max_iter=60, tol=1e-8, stop_mode="abs", protect_factor=1e3))
        f, z0 = _linear(24, 2, 0.6, 3, dtype=torch.float32)
        out[f"{solver}/fp32_bf16_state"] = (f, z0, dict(max_iter=30, tol=1e-5, history=6,
                                                        state_dtype=torch.bfloat16, branch_sizes=[20, 4]))
        for cap in (1, 2, 3):
            f, z0 = _linear(24, 2, 0.8, 4)
            out[f"{solver}/cap{cap}"] = (f, z0, dict(max_iter=cap, tol=1e-30, state_dtype=torch.float64))
    f, exact_from = _linear(24, 2, 0.5, 5)
    exact = exact_from
    for _ in range(200):
        exact = f(exact)
    z0 = torch.stack([torch.zeros(24, dtype=torch.float64), exact[1]])
    out["fixed_point/waits_for_every_sample"] = (f, z0, dict(max_iter=100, tol=1e-10, state_dtype=torch.float64))
    return out


def record(name: str, **extra) -> dict:
    """Run case ``name``: {"iterates": (calls, B, D) every z handed to f, "z": returned, stats...}."""
    from mdeq.solvers import get_solver

    f, z0, kwargs = cases()[name]
    seen = []

    def recording(z):
        seen.append(z.detach().clone())
        return f(z)

    z, stats = get_solver(name.split("/")[0])(recording, z0, **kwargs, **extra)
    row = {"iterates": torch.stack(seen), "z": z.detach().clone()}
    row.update({field: getattr(stats, field) for field in STAT_FIELDS})
    return row


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.save({name: record(name) for name in cases()}, sys.argv[1])
