"""``plan_memory``: estimated peak memory of one training step per device, with its breakdown.

Two parts, each from the source of truth for it:
- weights, gradients and optimizer state per rank: ZeRO partitioning arithmetic over the model's
  exact parameter count (``mdeq.planner.zero``);
- everything the step allocates (explicit activations, the solver's working set, the f step kept
  for the adjoint, the adjoint solve, gradients as they appear): a dry run of the real forward,
  loss and backward on the meta device (``mdeq.planner.dry_run``) with the solvers at their caps.

peak = weights + optimizer state + (dry-run peak − gradients alive at that moment)
       + those gradients × the share a rank keeps (1/W under ZeRO-2/3)
       − half of the saved activations alive at the peak in bf16/fp16 (see below).

Known approximations (docs/scaling.md): half precision is planned from an fp32 dry run (autocast
has no meta backend) by halving the saved activations; DeepSpeed's communication buckets, ZeRO-3's
in-flight gathered parameters, kernel workspaces (cuDNN) and allocator fragmentation are not
modelled; the optimizer step's own temporaries are not counted (the peak of a DEQ step is in the
backward pass for every zoo model at its recipe batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from mdeq.deq.options import DEQOptions
from mdeq.errors import MDEQError
from mdeq.planner.dry_run import dry_run_step
from mdeq.planner.zero import zero_bytes

MODES = ("equilibrium", "pretrain")


@dataclass(frozen=True)
class PlanRequest:
    """What to plan for: the model, the batch per device and the distributed layout."""

    model: str
    batch_size: int  # per device (micro-batch)
    height: int
    width: int
    precision: str = "fp32"  # fp32 | bf16 | fp16 (DeepSpeed engine precision)
    zero_stage: int = 0
    world_size: int = 1
    optimizer: str = "adam"  # sgd | adam | adamw
    momentum: float = 0.9
    mode: str = "equilibrium"  # equilibrium (implicit solve) | pretrain (unrolled warm-up)
    overrides: tuple[tuple[str, object], ...] = ()  # model.* overrides as (key, value) pairs
    deq: DEQOptions | None = None  # None: the registry entry's solver settings


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device. Components are what each part holds at its largest; ``peak`` is when
    they overlap (not their sum: the forward solve's buffers are freed before backward starts)."""

    parameters: int  # parameter count (not bytes)
    weights: int
    gradients: int  # this rank's gradient bytes after ZeRO partitioning
    optimizer_state: int  # moments (+ fp32 master weights in half precision), partitioned
    activations: int  # saved for backward by the explicit parts: stem, injection, head, loss
    solver_buffers: int  # forward solve working set: history factors, iterates, one f evaluation
    solver_history: int  # of which the solver's low-rank/history buffers (the solver's own report)
    implicit_backward_extras: int  # f step at z* kept for the adjoint + the adjoint solve's working set
    peak: int
    peak_phase: str  # explicit | forward_solve | f_step | backward
    f_max_iter: int
    b_max_iter: int

    def as_dict(self) -> dict:
        return asdict(self)


def _options_for(model: torch.nn.Module, request: PlanRequest) -> DEQOptions:
    options = request.deq if request.deq is not None else model.deq_options
    # The dry run computes in fp32 (no autocast on meta); half precision is applied afterwards.
    return replace(options, compute_dtype=None)


def plan_memory(request: PlanRequest) -> MemoryPlan:
    """Estimate the peak memory of one training step of ``request`` on one device."""
    from mdeq.registry import create_model

    if request.mode not in MODES:
        raise MDEQError(f"plan mode {request.mode!r} is unknown; use one of {', '.join(MODES)}")
    if request.batch_size < 1:
        raise MDEQError(f"batch size must be >= 1, got {request.batch_size}")
    model = create_model(request.model, device="meta", **dict(request.overrides))
    model.check_input_size(request.height, request.width)
    model.train()
    model.deq_options = _options_for(model, request)
    num_params = sum(p.numel() for p in model.parameters())
    static = zero_bytes(num_params, precision=request.precision, zero_stage=request.zero_stage,
                        world_size=request.world_size, optimizer=request.optimizer, momentum=request.momentum)
    if request.mode == "pretrain":
        _force_pretrain(model)
    run = dry_run_step(model, request.batch_size, request.height, request.width)
    grad_share = 1.0 / request.world_size if request.zero_stage >= 2 else 1.0
    half = request.precision != "fp32"
    # The dry run's gradients are fp32 (4 B/param); a half-precision engine keeps 2 B/param.
    grad_scale = 0.5 if half else 1.0
    activation_cut = run.saved_at_peak // 2 if half else 0  # saved activations are half-width
    dynamic = run.peak_bytes - run.grads_at_peak + int(run.grads_at_peak * grad_share * grad_scale) - activation_cut
    peak = static.weights + static.optimizer_state + dynamic
    saved_scale = 0.5 if half else 1.0
    options = model.deq_options
    return MemoryPlan(
        parameters=num_params, weights=static.weights, gradients=static.gradients,
        optimizer_state=static.optimizer_state,
        activations=int(run.explicit_activations * saved_scale),
        solver_buffers=run.forward_solve_working, solver_history=run.solver_history_bytes,
        implicit_backward_extras=int(run.f_step_saved * saved_scale) + run.adjoint_working,
        peak=peak, peak_phase=run.peak_phase,
        f_max_iter=options.f_max_iter, b_max_iter=options.b_max_iter,
    )


def _force_pretrain(model: torch.nn.Module) -> None:
    """Make ``model(x)`` take the unrolled warm-up path (what ``pretrain=True`` does in training)."""
    forward = model.forward

    def pretrain_forward(x: torch.Tensor, pretrain: bool = True) -> torch.Tensor:
        return forward(x, pretrain=True)

    model.forward = pretrain_forward  # instance attribute: this meta model only


def format_plan(plan: MemoryPlan, request: PlanRequest) -> str:
    """A human table of ``plan`` (MiB/GiB per device)."""
    rows = [
        ("parameters", f"{plan.parameters:,}"),
        ("weights", _size(plan.weights)),
        ("gradients", _size(plan.gradients)),
        ("optimizer state", _size(plan.optimizer_state)),
        ("activations (explicit parts)", _size(plan.activations)),
        ("solver buffers (forward solve)", _size(plan.solver_buffers)),
        ("  of which history factors", _size(plan.solver_history)),
        ("implicit-backward extras", _size(plan.implicit_backward_extras)),
        ("peak per device", f"{_size(plan.peak)}  (in {plan.peak_phase})"),
    ]
    head = (f"{request.model}: batch {request.batch_size}/device at {request.width}x{request.height} (WxH, as --res), "
            f"{request.precision}, ZeRO-{request.zero_stage}, world {request.world_size}, {request.optimizer}, "
            f"{request.mode} (caps F{plan.f_max_iter}/B{plan.b_max_iter})")
    width = max(len(r[0]) for r in rows)
    return "\n".join([head] + [f"  {name.ljust(width)}  {value}" for name, value in rows])


def _size(nbytes: int) -> str:
    if nbytes >= 1 << 30:
        return f"{nbytes / (1 << 30):.2f} GiB"
    return f"{nbytes / (1 << 20):.1f} MiB"
