"""Fault handling for the training loop: preemption, divergence, exit codes.

API the loop calls (every rank, at step boundaries)::

    from trainer.fault import (DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE, DivergenceError,
                               DivergenceGuard, PreemptionHandler, all_finite, grads_finite)

    preemption = PreemptionHandler(grace_seconds=cfg.checkpoint.grace_seconds).install()
    guard = DivergenceGuard(cfg.train.max_bad_steps, cfg.train.on_divergence)

    verdict = guard.observe(loss_finite, grads_finite, protective_break)   # collective
    #   "ok" -> step; "skip" -> zero grads, no step; "rollback" -> checkpointer.find_resume()+load();
    #   "abort" -> raise DivergenceError (exit DIVERGED_EXIT_CODE)
    if preemption.should_stop():                                            # collective
        checkpointer.save(engine, step, client_state); exit PREEMPTED_EXIT_CODE

``PreemptionHandler.should_stop`` and ``DivergenceGuard.observe`` are collectives: call them on every
rank at the same point. See docs/fault-tolerance.md.
"""

from trainer.fault.divergence import DivergenceError, DivergenceGuard, all_finite, grads_finite
from trainer.fault.exit_codes import DIVERGED_EXIT_CODE, PREEMPTED_EXIT_CODE
from trainer.fault.preemption import PreemptionHandler

__all__ = [
    "DIVERGED_EXIT_CODE", "PREEMPTED_EXIT_CODE", "DivergenceError", "DivergenceGuard", "PreemptionHandler",
    "all_finite", "grads_finite",
]
