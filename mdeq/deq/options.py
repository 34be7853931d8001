"""Options of one equilibrium solve: solvers, caps, gradient mode, precision, regularisation.

The trainer fills a :class:`DEQOptions` from the ``deq.*`` config section; the model keeps one as
``model.deq_options`` and hands it to :func:`mdeq.deq.equilibrium.solve_equilibrium`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mdeq.errors import MDEQError

GRAD_MODES = ("implicit", "unrolled", "phantom")
STOP_MODES = ("abs", "rel")
_FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


@dataclass
class DEQOptions:
    """How to find z* = f(z*) and how to differentiate through it."""

    f_solver: str = "broyden"  # forward solver, registry name: broyden | anderson | fixed_point
    b_solver: str = "broyden"  # solver of the adjoint fixed point in the implicit backward
    f_max_iter: int = 18  # cap on f evaluations of the forward solve
    b_max_iter: int = 20  # cap on vector-Jacobian products of the backward solve
    f_tol: float = 1e-3  # forward stop tolerance (per sample, in stop_mode)
    b_tol: float = 1e-6  # backward stop tolerance
    stop_mode: str = "rel"  # abs: ||f(z)-z||; rel: ||f(z)-z|| / ||f(z)||, both per sample
    history: int = 8  # low-rank pairs (Broyden) / past iterates (Anderson) kept: the memory bound
    grad_mode: str = "implicit"  # implicit | unrolled (backprop through f_max_iter f steps) | phantom
    unrolled_steps: int = 5  # f applications when solve_equilibrium(mode="unrolled") (warm-up)
    phantom_steps: int = 5  # damped f steps with grad after the solve (grad_mode="phantom")
    phantom_damping: float = 0.8  # lambda of z <- (1-lambda) z + lambda f(z) in phantom steps
    compute_dtype: torch.dtype | None = None  # autocast dtype of f; None: the caller's autocast, if any
    state_dtype: torch.dtype = torch.float32  # dtype of the solver's low-rank factors / history
    fp32_final_step: bool = True  # the differentiable f step at z* (so every VJP of the implicit
    # backward) runs without autocast: a bf16 solve with fp32-quality gradients (docs/solvers.md).
    # False: the backward runs in compute_dtype too (faster).
    jac_reg_weight: float = 0.0  # gamma: weight of the Hutchinson ||J_f||_F^2 estimate (0: off)
    jac_reg_prob: float = 0.0  # probability of adding the Jacobian term on a training forward
    # The draw decides whether a forward runs the extra (double) backward, i.e. which collectives a
    # data-parallel step runs: every rank must draw the same. With a seed it is a pure function of
    # (jac_reg_seed, jac_reg_index); None: Python's ``random`` (one process only).
    jac_reg_seed: int | None = None
    jac_reg_index: int = 0  # which training forward this is; the caller sets it before each forward
    protect_factor: float = 1e3  # protective break when the residual exceeds this x the first one
    anderson_lambda: float = 1e-4  # Anderson's Tikhonov regularisation, relative to the Gram scale
    anderson_beta: float = 1.0  # Anderson mixing (1: use f of the combination only)
    fixed_point_damping: float = 1.0  # z <- z + damping (f(z) - z) for the fixed_point solver
    stop_check_every: int = 0  # f evaluations between host reads of the stop flag; 0: per device
    # (CPU 1, CUDA mdeq.deq.fastpath.CUDA_STOP_CHECK_EVERY). Results do not depend on it.
    compile_f: str = "off"  # torch.compile f on CUDA: off | default | reduce-overhead (CUDA graphs) | max-autotune...
    cudnn_benchmark: bool = True  # on CUDA: cuDNN autotuning (the solve's shapes are fixed)
    tf32: bool = True  # on CUDA: TF32 convolutions where fp32 is asked for (cuDNN's default); matmuls stay fp32

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`MDEQError` naming the first field that cannot work."""
        from mdeq.solvers.registry import list_solvers

        known = list_solvers()
        for name in ("f_solver", "b_solver"):
            if getattr(self, name) not in known:
                raise MDEQError(f"deq.{name}={getattr(self, name)!r} is unknown; known solvers: {', '.join(known)}")
        if self.grad_mode not in GRAD_MODES:
            raise MDEQError(f"deq.grad_mode={self.grad_mode!r} is unknown; use one of {', '.join(GRAD_MODES)}")
        if self.stop_mode not in STOP_MODES:
            raise MDEQError(f"deq.stop_mode={self.stop_mode!r} is unknown; use abs or rel")
        for name in ("f_max_iter", "b_max_iter", "history", "unrolled_steps", "phantom_steps"):
            if int(getattr(self, name)) < 1:
                raise MDEQError(f"deq.{name} must be >= 1, got {getattr(self, name)}")
        if int(self.stop_check_every) < 0:
            raise MDEQError(f"deq.stop_check_every must be >= 0 (0: the device's default), got {self.stop_check_every}")
        from mdeq.deq.fastpath import COMPILE_MODES

        if self.compile_f not in COMPILE_MODES:
            raise MDEQError(f"deq.compile_f={self.compile_f!r} is unknown; use one of {', '.join(COMPILE_MODES)}")
        if not 0.0 < self.phantom_damping <= 1.0:
            raise MDEQError(f"deq.phantom_damping must be in (0, 1], got {self.phantom_damping}")
        if not 0.0 <= self.jac_reg_prob <= 1.0 or self.jac_reg_weight < 0.0:
            raise MDEQError("deq.jac_reg_prob must be in [0, 1] and deq.jac_reg_weight >= 0")
        if self.compute_dtype is not None and self.compute_dtype not in _FLOAT_DTYPES:
            raise MDEQError(f"deq compute dtype {self.compute_dtype} is not a float dtype")
        if self.state_dtype not in _FLOAT_DTYPES:
            raise MDEQError(f"deq state dtype {self.state_dtype} is not a float dtype")


def dtype_from_name(name: str | None) -> torch.dtype | None:
    """Map a config precision name (fp32 | bf16 | fp16 | fp64, or None/auto) to a torch dtype."""
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
    if name is None or name == "auto":
        return None
    if name not in table:
        raise MDEQError(f"precision {name!r} is unknown; use one of {', '.join(table)}")
    return table[name]
