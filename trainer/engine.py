"""The DeepSpeed engine, configured from ``deepspeed.*``, ``data.*``, ``train.*`` and ``optim.*``.

The generated ds_config names micro-batch and gradient accumulation (never train_batch_size) so one
config fits any world size, always sets ``gradient_clipping`` (DeepSpeed 0.19 defaults it to 1.0),
and allows the torch optimizers we pass (SGD under ZeRO needs ``zero_allow_untested_optimizer``).
The learning rate is set by the loop every step (``trainer.schedules``), so no scheduler is passed.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import Config
from trainer.config.loader import deep_merge

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def ds_config(cfg: Config, grad_accum_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``cfg`` (``deepspeed.extra`` merged on top)."""
    precision = cfg.deepspeed.precision
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": float(cfg.train.grad_clip),
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": precision == "bf16"},
        # dynamic loss scaling (loss_scale 0) for fp16
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16,
                 "loss_scale_window": 1000, "hysteresis": 2, "min_loss_scale": 1},
        "steps_per_print": 10**9,  # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
    }
    return deep_merge(config, cfg.deepspeed.extra)


def build_engine(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_accum_steps: int):
    """``deepspeed.initialize`` the model with our torch optimizer; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, grad_accum_steps),
                                           dist_init_required=False)
    return engine


def engine_dtype(engine) -> torch.dtype:
    """The dtype the engine's module computes in (inputs are cast to it)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32
