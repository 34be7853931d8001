"""Resuming a ZeRO checkpoint with a different number of processes (universal checkpoint)."""

from __future__ import annotations

from typing import Any

from trainer.errors import TrainerError


def prepare_universal(engine: Any, point: Any, *, rank: int) -> tuple[str, str]:
    """Convert ``point`` to DeepSpeed's universal format (once) and point ``engine`` at it."""
    raise TrainerError(f"checkpoint {point.path} was saved by {point.world_size} processes with ZeRO stage "
                       f"{point.zero_stage}; resuming it with another process count is not supported yet")
