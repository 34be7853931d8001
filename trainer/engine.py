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


# "no clipping" under ZeRO 1-3: a threshold no norm reaches. DeepSpeed's ZeRO optimizers check the
# gradient norm for NaN/Inf (and then drop the update) only when clipping is on, outside fp16/bf16
# modes; with 0 a non-finite gradient from a finite loss would reach the weights. ZeRO 0 is checked
# by the loop itself (trainer.step), so 0 stays 0 there.
NO_CLIP_THRESHOLD = 1e30


def _clipping(cfg: Config) -> float:
    if cfg.train.grad_clip > 0:
        return float(cfg.train.grad_clip)
    return 0.0 if cfg.deepspeed.zero_stage == 0 else NO_CLIP_THRESHOLD


def ds_config(cfg: Config, grad_accum_steps: int) -> dict[str, Any]:
    """The DeepSpeed config dict for ``cfg`` (``deepspeed.extra`` merged on top)."""
    precision = cfg.deepspeed.precision
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "gradient_clipping": _clipping(cfg),
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        # Mixed precision is torch autocast over fp32 parameters (DeepSpeed's "torch_autocast"), not
        # DeepSpeed's bf16/fp16 modes, which cast the whole module: the DEQ keeps its solver state and
        # GroupNorm in fp32 and runs f's convolutions in the low precision (deq.precision.compute).
        # fp16 gets dynamic loss scaling from the GradScaler DeepSpeed attaches in this mode.
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # our own progress line replaces DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if precision in ("bf16", "fp16"):
        config["torch_autocast"] = {"enabled": True, "dtype": {"bf16": "bfloat16", "fp16": "float16"}[precision]}
    return deep_merge(config, cfg.deepspeed.extra)


def build_engine(cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, grad_accum_steps: int):
    """``deepspeed.initialize`` the model with our torch optimizer; returns the engine."""
    import deepspeed

    from trainer.library_notes import silence_known_warnings

    silence_known_warnings()  # SGD/Adam under ZeRO are tested here: no "untested optimizer" on every run
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config(cfg, grad_accum_steps),
                                           dist_init_required=False)
    # With DeepSpeed's own bf16/fp16 modes (set through deepspeed.extra) parameters are cast but not
    # buffers; BatchNorm refuses bf16 inputs with fp32 running statistics, so buffers follow.
    dtype = engine_dtype(engine)
    if dtype != torch.float32:
        for buffer in engine.module.buffers():
            if buffer.is_floating_point():
                buffer.data = buffer.data.to(dtype)
    return engine


def engine_dtype(engine) -> torch.dtype:
    """The dtype of the engine's parameters (inputs are cast to it; fp32 under autocast)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32
