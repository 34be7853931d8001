"""Committed, exactly resumable checkpoints.

API the training loop calls (every rank; the calls marked collective on all ranks at the same point)::

    from trainer.checkpoint import Checkpointer, ResumePoint, check_compatible, config_hash

    ckpt = Checkpointer(cfg.checkpoint, rank=rank, world_size=world_size,
                        config_hash=config_hash(resolved), config=resolved)
    try:
        point = ckpt.find_resume()             # collective; None = fresh start; raises TrainerError
                                               # naming the keys on a breaking config change, when
                                               # another live run holds the folder (run lock) or
                                               # another run's checkpoints are in it (ownership)
    # point.client_state (rank 0's saved state, e.g. the MLflow run id) is readable before the engine exists
    if point is not None:
        state = ckpt.load(engine, point)       # collective; restores this rank's RNG; returns the
                                               # client_state this rank saved (step, epoch, loader_state, ...)
    ...each optimizer step, after the update...
    if ckpt.should_save(step):                 # collective only when every_minutes > 0
        ckpt.save(engine, step, client_state, metric=None,   # collective; commits; applies retention
                  write_extra=lambda tag_dir: ...)   # optional: extra files (model.pt) inside the commit
    ...end of training: ckpt.save(engine, final_step, client_state)  (no-op if already committed)
    finally:
        ckpt.close()                           # releases the run lock

``client_state`` must be JSON-serialisable (it is never pickled). Put the per-rank data position
under the key ``loader_state``: with a different world size on resume every rank receives rank 0's
(see ``Checkpointer.load``). Rollback after divergence = ``ckpt.load(engine, ckpt.find_resume())``.

On-disk layout, commit protocol and verification: ``trainer.checkpoint.store``; which run owns a
folder: ``ownership``; the run lock: ``lock``. DeepSpeed's own files are read with
``weights_only=True``: ``trainer.checkpoint.files``. Rules: docs/fault-tolerance.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Resolved on first use (PEP 562): the lock and ownership helpers import without torch.
_EXPORTS: dict[str, str] = {
    "Checkpointer": "trainer.checkpoint.checkpointer",
    "weights_finite": "trainer.checkpoint.checkpointer",
    "check_compatible": "trainer.checkpoint.compat",
    "classify_changes": "trainer.checkpoint.compat",
    "config_hash": "trainer.checkpoint.ownership",
    "InvalidCheckpoint": "trainer.checkpoint.store",
    "ResumePoint": "trainer.checkpoint.store",
}

if TYPE_CHECKING:
    from trainer.checkpoint.checkpointer import Checkpointer, weights_finite  # noqa: F401
    from trainer.checkpoint.compat import check_compatible, classify_changes  # noqa: F401
    from trainer.checkpoint.ownership import config_hash  # noqa: F401
    from trainer.checkpoint.store import InvalidCheckpoint, ResumePoint  # noqa: F401

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'trainer.checkpoint' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
