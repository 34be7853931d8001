"""One optimizer step: micro-batches through the DeepSpeed engine, with the divergence check.

Before any backward, every rank learns (one small all-reduce per micro-step, which also averages the
loss for logging) whether some rank's loss is non-finite. Then all ranks take the same path: either
all run backward, or none does and the whole optimizer step is skipped. Ranks that disagreed would
hang in ZeRO's collective backward.
"""

from __future__ import annotations

import json
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


class SampleLog:
    """Test switch ``MDEQ_SAMPLE_LOG=path``: append the sample keys of every micro-step to
    ``path.rank<r>`` as JSON lines {"step", "micro", "rank", "keys"} (the fault tests' accounting)."""

    def __init__(self, rank: int) -> None:
        base = os.environ.get("MDEQ_SAMPLE_LOG")
        self.rank = rank
        self.path = f"{base}.rank{rank}" if base else None

    def write(self, step: int, micro: int, keys) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as out:
            out.write(json.dumps({"step": step, "micro": micro, "rank": self.rank,
                                  "keys": list(keys) if keys is not None else None}) + "\n")


def _solver_metrics(stats, prefix: str = "solver/") -> dict[str, float]:
    if stats is None:
        return {}
    out = {f"{prefix}f_nfe": float(stats.nfe), f"{prefix}abs_residual": float(stats.abs_residual),
           f"{prefix}rel_residual": float(stats.rel_residual),
           f"{prefix}protective_break": float(bool(stats.protective_break))}
    for i, value in enumerate(stats.branch_residuals):
        out[f"{prefix}residual_branch{i}"] = float(value)
    if stats.b_nfe:
        out[f"{prefix}b_nfe"] = float(stats.b_nfe)
        out[f"{prefix}b_residual"] = float(stats.b_residual)
    return out


def train_step(engine, batches, *, step: int, task: str, pretrain: bool, accum: int, dtype: torch.dtype,
               device: torch.device, label_smoothing: float, inject_nan: bool, sample_log: SampleLog,
               stream=None) -> StepOutcome:
    """Run ``accum`` micro-steps from the iterator ``batches`` and (unless skipped) one optimizer step."""
    t0 = time.perf_counter()
    data_seconds = 0.0
    loss_total = 0.0
    samples = 0
    solver: dict[str, float] = {}
    protective = False
    micro_steps_at_start = engine.micro_steps
    skipped = False
    for micro in range(accum):
        t_data = time.perf_counter()
        images, targets = next(batches)
        data_seconds += time.perf_counter() - t_data
        sample_log.write(step, micro, getattr(stream, "last_keys", None))
        images = images.to(device, dtype=dtype, non_blocking=True)  # (B, 3, H, W)
        targets = targets.to(device, non_blocking=True)  # (B,) or (B, H, W)
        samples += images.shape[0]
        logits = engine(images, pretrain=pretrain)
        loss = task_loss(task, logits, targets, label_smoothing)
        stats = getattr(engine.module, "last_stats", None)
        if stats is not None and stats.jac_loss is not None:
            loss = loss + stats.jac_loss.float()
        if inject_nan:
            loss = loss * float("nan")
        protective = protective or bool(stats is not None and stats.protective_break)
        # [loss sum over ranks, ranks with a non-finite loss]: one all-reduce decides for all ranks
        value = loss.detach().float()
        finite = bool(torch.isfinite(value))
        check = torch.stack([torch.where(torch.isfinite(value), value, torch.zeros_like(value)),
                             torch.tensor(0.0 if finite else 1.0, device=value.device)]).to(device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(check)
        world = dist.get_world_size() if dist.is_initialized() else 1
        if check[1].item() > 0:
            skipped = True
            break
        loss_total += check[0].item() / world
        engine.backward(loss)
        if stats is not None:
            solver = _solver_metrics(stats)  # after backward: b_nfe is filled in by the adjoint solve
        engine.step()
    if skipped:
        # No rank ran backward for the bad micro-step; drop what earlier micro-steps accumulated and
        # put DeepSpeed's micro-step counter back so the next step's accumulation boundary is right.
        engine.zero_grad()
        engine.micro_steps = micro_steps_at_start
    grads_finite = True
    if not skipped:
        norm = engine.get_global_grad_norm() if hasattr(engine, "get_global_grad_norm") else None
        if norm is not None:
            norm = float(norm)
            grads_finite = norm == norm and norm != float("inf")
            solver["train/grad_norm"] = norm
    return StepOutcome(loss=loss_total / accum if not skipped else float("nan"), applied=not skipped,
                       loss_finite=not skipped, grads_finite=grads_finite, protective_break=protective,
                       samples=samples, data_seconds=data_seconds, seconds=time.perf_counter() - t0,
                       solver=solver)
