"""The loader's resumable state, and what happens when the layout changed between runs.

Same seed, world size, workers, batch size and shards: the position is restored exactly. Otherwise
the epoch is kept and the fraction of it already consumed is carried over (the step is rescaled
by the global batch), so the run neither restarts the epoch nor skips the rest of it; the order of
the rest of that epoch differs from the interrupted run's (some of its samples may be seen twice,
some not at all), and from the next epoch on the order is exact for the new layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from data_pipelines.errors import DataError

log = logging.getLogger("data_pipelines")
_LAYOUT = ("seed", "world_size", "workers", "batch_size", "num_shards", "steps_per_epoch")


@dataclass
class StreamState:
    epoch: int
    step_in_epoch: int  # batches of this epoch already consumed by the trainer
    seed: int
    rank: int
    world_size: int
    workers: int
    batch_size: int
    num_shards: int
    steps_per_epoch: int
    bad_samples: int = 0
    samples_seen: int = 0
    version: int = 1

    @classmethod
    def from_dict(cls, state: dict) -> StreamState:
        names = {f.name for f in fields(cls)}
        missing = {"epoch", "step_in_epoch", "world_size", "batch_size"} - set(state)
        if missing or not isinstance(state, dict):
            raise DataError(f"loader state is missing {sorted(missing)}: not a state_dict() of a TrainStream")
        return cls(**{k: v for k, v in state.items() if k in names})


def restore_position(saved: StreamState, current: dict) -> tuple[int, int, int, int]:
    """(epoch, step_in_epoch, bad_samples, samples_seen) to continue from in the current layout."""
    changed = [k for k in _LAYOUT if getattr(saved, k) != current[k]]
    if not changed:
        return saved.epoch, saved.step_in_epoch, saved.bad_samples, saved.samples_seen
    old_global = saved.world_size * saved.batch_size
    new_global = current["world_size"] * current["batch_size"]
    step = min(saved.step_in_epoch * old_global // new_global, current["steps_per_epoch"])
    log.warning("loader layout changed since the checkpoint (%s): keeping epoch %d and %d/%d of it; the rest of "
                "this epoch is not in the interrupted run's order, later epochs are exact",
                ", ".join(f"{k} {getattr(saved, k)}->{current[k]}" for k in changed), saved.epoch,
                step, current["steps_per_epoch"])
    return saved.epoch, step, saved.bad_samples, saved.samples_seen
