"""The loader's resumable state: where the run is in the layout-free order, not in one rank's stream.

The position is (epoch, global batches consumed, micro-batches of the current one consumed). The
order depends only on (seed, shards, streams, global batch), so a state written by N processes with
W workers resumes on M processes with V workers exactly: same samples in the same global batches,
none repeated or skipped. Two cases cannot continue exactly:

- a state saved in the middle of a global batch (some micro-batches consumed) resumes only with the
  same world size and micro-batch (the trainer saves at optimizer steps, never there) — refused;
- another seed, shard list, number of streams or global batch: a different order. The epoch is kept
  and the fraction of it already consumed is carried over, with a warning naming what changed; the
  rest of that epoch is not in the interrupted run's order (some samples may be seen twice, some
  not at all) and later epochs are exact for the new order. States of version 1 (rank-dependent
  order) are treated the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from data_pipelines.errors import DataError

log = logging.getLogger("data_pipelines")
VERSION = 2
_ORDER = ("seed", "num_shards", "total_samples", "streams", "global_batch")  # what fixes the order


@dataclass
class StreamState:
    epoch: int
    global_step_in_epoch: int  # global batches of this epoch completely consumed
    micro_in_step: int = 0  # micro-batches of the next global batch already consumed (this layout)
    seed: int | None = None
    streams: int | None = None
    global_batch: int | None = None
    num_shards: int | None = None
    total_samples: int | None = None
    micro_batch: int | None = None
    world_size: int | None = None  # informational: the layout that saved it
    workers: int | None = None
    bad_samples: int = 0
    samples_seen: int = 0
    version: int = VERSION

    @classmethod
    def from_dict(cls, state: dict) -> StreamState:
        if not isinstance(state, dict) or "epoch" not in state:
            raise DataError("loader state is not a state_dict() of a TrainStream (no 'epoch')")
        if state.get("version", 1) == 1:
            return _from_version_1(state)
        names = {f.name for f in fields(cls)}
        if "global_step_in_epoch" not in state:
            raise DataError("loader state is missing 'global_step_in_epoch': not a state_dict() of a TrainStream")
        return cls(**{k: v for k, v in state.items() if k in names})


def _from_version_1(state: dict) -> StreamState:
    """A state of the rank-dependent order: its position as a fraction of the epoch, nothing exact."""
    missing = {"epoch", "step_in_epoch", "world_size", "batch_size"} - set(state)
    if missing:
        raise DataError(f"loader state is missing {sorted(missing)}: not a state_dict() of a TrainStream")
    global_batch = state["world_size"] * state["batch_size"]
    return StreamState(epoch=state["epoch"], global_step_in_epoch=state["step_in_epoch"], seed=state.get("seed"),
                       global_batch=global_batch, num_shards=state.get("num_shards"), world_size=state["world_size"],
                       micro_batch=state["batch_size"], workers=state.get("workers"),
                       bad_samples=state.get("bad_samples", 0), samples_seen=state.get("samples_seen", 0), version=1)


def restore_position(saved: StreamState, current: dict, steps_per_epoch: int) -> tuple[int, int, int, int, int]:
    """(epoch, global_step_in_epoch, micro_in_step, bad_samples, samples_seen) to continue from."""
    changed = [k for k in _ORDER if getattr(saved, k) != current[k]]
    if saved.version != VERSION:
        changed.append("order version")
    if not changed:
        if saved.micro_in_step and (saved.world_size, saved.micro_batch) != (current["world_size"],
                                                                             current["micro_batch"]):
            raise DataError(f"the loader state was saved after {saved.micro_in_step} micro-batch(es) of a global "
                            f"batch by {saved.world_size} process(es) with micro-batches of {saved.micro_batch}; "
                            "it can only continue with that layout: resume from a state saved at an optimizer "
                            "step (the trainer's checkpoints are)")
        return saved.epoch, saved.global_step_in_epoch, saved.micro_in_step, saved.bad_samples, saved.samples_seen
    old_samples = saved.global_step_in_epoch * (saved.global_batch or 0)
    step = min(old_samples // current["global_batch"], steps_per_epoch)
    log.warning("the loader's sample order changed since the checkpoint (%s): keeping epoch %d and %d/%d of it; the "
                "rest of this epoch is not in the interrupted run's order, later epochs are exact",
                ", ".join(f"{k} {getattr(saved, k, None)}->{current.get(k, VERSION)}" for k in changed
                          if k in _ORDER) or f"version {saved.version}->{VERSION}",
                saved.epoch, step, steps_per_epoch)
    return saved.epoch, step, 0, saved.bad_samples, saved.samples_seen
