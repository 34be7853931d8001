"""Per-iteration learning-rate schedules as pure functions of the optimizer step.

A pure function of the step (not a stateful scheduler object) means a resumed run gets exactly the
learning rate an uninterrupted one would, with nothing extra to checkpoint. The loop sets the value
on the optimizer before every optimizer step.
"""

from __future__ import annotations

import math

from trainer.config import OptimConfig


def lr_at(step: int, optim: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of a ``max_steps`` run.

    - warm-up (all schedules): linear from lr/warmup_steps up to lr over ``warmup_steps`` steps;
    - ``cosine``: half a cosine from lr down to ``min_lr`` over the remaining steps;
    - ``poly``: lr * (1 - t)^poly_power over the remaining steps, floored at ``min_lr``;
    - ``constant``: lr.
    """
    base = optim.lr
    if optim.warmup_steps > 0 and step < optim.warmup_steps:
        return base * (step + 1) / optim.warmup_steps
    span = max(1, max_steps - optim.warmup_steps)
    progress = min(1.0, max(0.0, (step - optim.warmup_steps) / span))
    if optim.schedule == "cosine":
        return optim.min_lr + (base - optim.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if optim.schedule == "poly":
        return max(optim.min_lr, base * (1.0 - progress) ** optim.poly_power)
    return base


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of a torch (or DeepSpeed-wrapped) optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = lr
