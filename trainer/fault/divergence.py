"""Divergence guard: skip bad updates, count them, roll back or abort after K in a row.

A step is *bad* when its loss or a gradient is non-finite, or when the equilibrium solver took its
protective break (the solve itself diverged). A bad step's update must be skipped by the loop (no
``optimizer.step``; gradients zeroed), so no non-finite value ever reaches the weights — and the
checkpointer refuses to save non-finite weights as a last line of defence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

from trainer.errors import TrainerError
from trainer.fault.collectives import any_rank
from trainer.fault.exit_codes import DIVERGED_EXIT_CODE

log = logging.getLogger(__name__)

Verdict = Literal["ok", "skip", "rollback", "abort"]


class DivergenceError(TrainerError):
    """Training diverged and could not be recovered; the CLI exits with ``DIVERGED_EXIT_CODE``."""

    exit_code = DIVERGED_EXIT_CODE


def all_finite(values: Iterable[torch.Tensor | float | None]) -> bool:
    """True when every tensor/number in ``values`` is finite (``None`` entries are ignored)."""
    for value in values:
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            if value.numel() and not bool(torch.isfinite(value).all()):
                return False
        elif not math.isfinite(float(value)):
            return False
    return True


def grads_finite(module: torch.nn.Module) -> bool:
    """True when every ``.grad`` of ``module`` is finite (ZeRO 0). Under ZeRO 1-3 the reduced gradients
    are partitioned: DeepSpeed's step drops an update whose global norm is non-finite and
    ``trainer.step.train_step`` reports it from that norm (tests/trainer/test_fault_zero3.py)."""
    return all_finite(p.grad for p in module.parameters() if p.grad is not None)


@dataclass
class DivergenceGuard:
    """Counts bad steps and says what to do with each one.

    ``observe`` is collective: every rank passes its local view and all ranks get the same verdict
    (one rank's NaN loss makes the step bad everywhere, so ranks never disagree on whether to step).

    Verdicts: ``"ok"`` (apply the update), ``"skip"`` (drop this update), ``"rollback"`` (drop it and
    reload the last committed checkpoint: ``max_bad_steps`` consecutive bad steps with
    ``on_divergence='rollback'``), ``"abort"`` (same with ``on_divergence='abort'``, or a rollback
    that would exceed ``max_rollbacks``: raise ``DivergenceError``/exit ``DIVERGED_EXIT_CODE``).
    """

    max_bad_steps: int = 3
    on_divergence: Literal["rollback", "abort"] = "rollback"
    max_rollbacks: int = 3  # rollbacks in one process before giving up (a deterministic NaN repeats)
    consecutive_bad: int = 0
    total_skipped: int = 0  # bad steps since start (log it as a metric)
    rollbacks: int = 0

    def observe(self, loss_finite: bool, grads_finite: bool = True, protective_break: bool = False) -> Verdict:
        """Record one step (collective) and return what the loop must do with its update."""
        bad = any_rank(not loss_finite or not grads_finite or protective_break)
        if not bad:
            self.consecutive_bad = 0
            return "ok"
        self.consecutive_bad += 1
        self.total_skipped += 1
        log.warning("bad step (loss_finite=%s grads_finite=%s protective_break=%s): update skipped, "
                    "%d in a row, %d in total", loss_finite, grads_finite, protective_break,
                    self.consecutive_bad, self.total_skipped)
        if self.consecutive_bad < self.max_bad_steps:
            return "skip"
        self.consecutive_bad = 0
        if self.on_divergence == "abort" or self.rollbacks >= self.max_rollbacks:
            return "abort"
        self.rollbacks += 1
        return "rollback"

    def state_dict(self) -> dict[str, int]:
        """JSON-able counters, to keep ``total_skipped`` across resumes (put it in client_state)."""
        return {"total_skipped": self.total_skipped, "rollbacks": self.rollbacks}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.total_skipped = int(state.get("total_skipped", 0))
        self.rollbacks = int(state.get("rollbacks", 0))
