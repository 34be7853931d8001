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

from trainer.checkpoint.checkpointer import Checkpointer, weights_finite
from trainer.checkpoint.compat import check_compatible, classify_changes
from trainer.checkpoint.ownership import config_hash
from trainer.checkpoint.store import InvalidCheckpoint, ResumePoint

__all__ = ["Checkpointer", "InvalidCheckpoint", "ResumePoint", "check_compatible", "classify_changes",
           "config_hash", "weights_finite"]
