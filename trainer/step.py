"""One optimizer step: micro-batches through the DeepSpeed engine, with the divergence check.

Before any backward, every rank learns (one small all-reduce per micro-step, which also averages the
loss for logging) whether some rank's loss is non-finite. Then all ranks take the same path: either
all run backward, or none does and the whole optimizer step is skipped. Ranks that disagreed would
hang in ZeRO's collective backward.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from trainer.losses import task_loss


@dataclass
class StepOutcome:
    """What one optimizer step did (loss averaged over ranks and micro-steps)."""

    loss: float
    applied: bool  # False: skipped (non-finite loss on some rank)
    loss_finite: bool
    grads_finite: bool
    protective_break: bool
    samples: int  # samples of this rank
    data_seconds: float
    seconds: float
    solver: dict[str, float] = field(default_factory=dict)
    correct: float = 0.0  # this rank's top-1 hits (classification) or correct pixels (segmentation)
    scored: float = 0.0  # this rank's samples (or labelled pixels) behind ``correct``
    traces: dict[str, list] = field(default_factory=dict)  # the last micro-step's solver traces (solver_traces)


def sample_log_enabled() -> bool:
    return bool(os.environ.get("MDEQ_SAMPLE_LOG"))


class SampleLog:
    """Test switch ``MDEQ_SAMPLE_LOG=path``: append the sample keys of every micro-step to
    ``path.rank<r>`` as JSON lines {"step", "micro", "rank", "world", "time", "keys"} (the fault
    tests' accounting; ``time`` is the wall clock, ``world`` the number of processes), and every
    training forward's random decisions to ``path.rank<r>.draws`` as {"step", "micro", "jac_reg"}
    (ranks must agree on them)."""

    def __init__(self, rank: int, world_size: int = 1) -> None:
        base = os.environ.get("MDEQ_SAMPLE_LOG")
        self.rank, self.world_size = rank, world_size
        self.path = f"{base}.rank{rank}" if base else None

    def write(self, step: int, micro: int, keys) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as out:
            out.write(json.dumps({"step": step, "micro": micro, "rank": self.rank, "world": self.world_size,
                                  "time": time.time(), "keys": list(keys) if keys is not None else None}) + "\n")

    def write_draws(self, step: int, micro: int, stats) -> None:
        if self.path is None:
            return
        with open(f"{self.path}.draws", "a") as out:
            out.write(json.dumps({"step": step, "micro": micro,
                                  "jac_reg": stats is not None and stats.jac_loss is not None}) + "\n")


def _solver_metrics(stats, pretrain: bool, prefix: str = "solver/") -> dict[str, float]:
    """One step's solver numbers (this rank). Unrolled pre-training has no tolerance and no cap:
    its steps report no converged fraction or cap hit."""
    if stats is None:
        return {}
    out = {f"{prefix}f_nfe": float(stats.nfe), f"{prefix}abs_residual": float(stats.abs_residual),
           f"{prefix}rel_residual": float(stats.rel_residual),
           f"{prefix}protective_break": float(bool(stats.protective_break))}
    for i, value in enumerate(stats.branch_residuals):
        out[f"{prefix}residual_branch{i}"] = float(value)
    if not pretrain:
        out[f"{prefix}f_converged"] = float(stats.converged_fraction)
        out[f"{prefix}f_hit_cap"] = float(bool(stats.hit_cap))
    if stats.b_nfe:
        out[f"{prefix}b_nfe"] = float(stats.b_nfe)
        out[f"{prefix}b_residual"] = float(stats.b_residual)
        out[f"{prefix}b_converged"] = float(stats.b_converged_fraction)
        out[f"{prefix}b_hit_cap"] = float(bool(stats.b_hit_cap))
    return out


def solver_traces(stats) -> dict[str, list]:
    """The residual traces of one equilibrium solve and its adjoint (lists only: no tensors kept)."""
    if stats is None:
        return {}
    return {"f_trace": list(stats.residual_trace), "f_branch_trace": [list(r) for r in stats.branch_trace],
            "b_trace": list(stats.b_trace), "b_branch_trace": [list(r) for r in stats.b_branch_trace]}


@torch.no_grad()
def _hits(task: str, logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(correct, scored) of one micro-batch: top-1 hits over samples, or correct over labelled pixels."""
    if task == "classification":
        return float((logits.argmax(1) == targets).sum().item()), float(targets.numel())
    from trainer.losses import IGNORE_INDEX, upsample_to

    pred = upsample_to(logits.detach().float(), tuple(targets.shape[-2:])).argmax(1)  # (B, H, W)
    keep = targets != IGNORE_INDEX
    return float((pred.eq(targets) & keep).sum().item()), float(keep.sum().item())


def _zero_grads_finite(engine) -> bool:
    """Under ZeRO 0 the reduced gradients sit in ``p.grad``: check them before the update (collective)."""
    from trainer.fault import grads_finite
    from trainer.fault.collectives import any_rank

    return not any_rank(not grads_finite(engine.module))


def train_step(engine, batches, *, step: int, task: str, pretrain: bool, accum: int, dtype: torch.dtype,
               device: torch.device, label_smoothing: float, inject_nan: bool, sample_log: SampleLog) -> StepOutcome:
    """Run ``accum`` micro-steps from the iterator ``batches`` and (unless skipped) one optimizer step.

    A micro-step whose loss is non-finite, or whose solve hit a protective break, on any rank skips
    the whole optimizer step (no rank runs backward for it). Under ZeRO 0 non-finite gradients are
    caught before the update; under ZeRO 1-3 DeepSpeed's own overflow check drops such an update
    and the non-finite global norm reports it.
    """
    t0 = time.perf_counter()
    data_seconds = 0.0
    loss_total = 0.0
    samples = 0
    correct = scored = 0.0
    solver: dict[str, float] = {}
    traces: dict[str, list] = {}
    micro_steps_at_start = engine.micro_steps
    loss_finite, protective, grads_ok = True, False, True
    world = dist.get_world_size() if dist.is_initialized() else 1
    for micro in range(accum):
        t_data = time.perf_counter()
        batch = next(batches)
        data_seconds += time.perf_counter() - t_data
        images, targets = batch[0], batch[1]
        sample_log.write(step, micro, batch[2] if len(batch) > 2 else None)
        images = images.to(device, dtype=dtype, non_blocking=True)  # (B, 3, H, W)
        targets = targets.to(device, non_blocking=True)  # (B,) or (B, H, W)
        samples += images.shape[0]
        options = getattr(engine.module, "deq_options", None)
        if options is not None:  # per-forward random decisions derive from this index: the same on every rank
            options.jac_reg_index = step * accum + micro
        logits = engine(images, pretrain=pretrain)
        loss = task_loss(task, logits, targets, label_smoothing)
        stats = getattr(engine.module, "last_stats", None)
        sample_log.write_draws(step, micro, stats)
        if stats is not None and stats.jac_loss is not None:
            loss = loss + stats.jac_loss.float()
        if inject_nan:
            loss = loss * float("nan")
        # [loss sum, ranks with a non-finite loss, ranks with a protective break]: one all-reduce
        value = loss.detach().float().reshape(())
        finite = bool(torch.isfinite(value))
        broke = bool(stats is not None and stats.protective_break and not pretrain)
        check = torch.stack([value if finite else torch.zeros_like(value),
                             torch.tensor(0.0 if finite else 1.0), torch.tensor(1.0 if broke else 0.0)]).to(device)
        if world > 1:
            dist.all_reduce(check)
        loss_finite, protective = check[1].item() == 0, check[2].item() > 0
        if not loss_finite or protective:
            break
        loss_total += check[0].item() / world
        hits = _hits(task, logits, targets)
        correct, scored = correct + hits[0], scored + hits[1]
        engine.backward(loss)
        if stats is not None:
            solver = _solver_metrics(stats, pretrain)  # after backward: b_* filled in by the adjoint solve
            traces = {} if pretrain else solver_traces(stats)
        if micro == accum - 1 and engine.zero_optimization_stage() == 0:
            grads_ok = _zero_grads_finite(engine)
            if not grads_ok:
                break
        engine.step()
    applied = loss_finite and not protective and grads_ok
    if not applied:
        # Drop what earlier micro-steps accumulated and put DeepSpeed's micro-step counter back so
        # the next step's accumulation boundary is where it belongs.
        engine.zero_grad()
        engine.micro_steps = micro_steps_at_start
    else:
        norm = engine.get_global_grad_norm()
        if norm is not None:
            norm = float(norm)
            grads_ok = math.isfinite(norm)
            solver["train/grad_norm"] = norm
    return StepOutcome(loss=loss_total / accum if applied else float("nan"), applied=applied and grads_ok,
                       loss_finite=loss_finite, grads_finite=grads_ok, protective_break=protective,
                       samples=samples, data_seconds=data_seconds, seconds=time.perf_counter() - t0,
                       solver=solver, correct=correct if applied else 0.0, scored=scored if applied else 0.0,
                       traces=traces)
