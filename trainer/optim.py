"""Torch optimizers from ``optim.*`` (passed to DeepSpeed as client optimizers).

Passing a torch optimizer rather than naming one in the DeepSpeed config avoids DeepSpeed's C++
Adam op, which compiles on CPU machines (platform notes). Weight decay applies to every parameter,
as in the released MDEQ recipes.
"""

from __future__ import annotations

import torch

from trainer.config import OptimConfig
from trainer.errors import TrainerError

OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(optim: OptimConfig, parameters) -> torch.optim.Optimizer:
    """The torch optimizer ``optim.name`` over ``parameters`` at learning rate ``optim.lr``."""
    params = [p for p in parameters if p.requires_grad]
    if optim.name == "sgd":
        if optim.nesterov and optim.momentum <= 0:
            raise TrainerError("optim.nesterov needs optim.momentum > 0 (set optim.momentum=0.9 or "
                               "optim.nesterov=false)")
        return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, nesterov=optim.nesterov,
                               weight_decay=optim.weight_decay)
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    raise TrainerError(f"unknown optimizer {optim.name!r}; known: {', '.join(OPTIMIZERS)}")
