"""Committed, exactly resumable DeepSpeed checkpoints (see ``trainer.checkpoint`` for the API)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from trainer.checkpoint import ownership, store
from trainer.checkpoint.compat import check_compatible
from trainer.checkpoint.files import DurableWrites, atomic_write_json, describe_files, install_safe_loader
from trainer.checkpoint.lock import RunLock
from trainer.checkpoint.rng import capture_rng_state, restore_rng_state
from trainer.config.schema import CheckpointConfig
from trainer.errors import TrainerError
from trainer.fault.collectives import any_rank, barrier, broadcast_from_rank0

log = logging.getLogger(__name__)

# Test-only fault injection: "STEP" or "STEP:RANK" makes that rank die (os._exit) in the middle of
# the save at STEP: after it wrote (and fsynced) all its files, before the barrier that precedes the
# commit marker; "STEP:RANK:kill" SIGKILLs it there instead. It fires only in the first generation
# (TORCHELASTIC_RESTART_COUNT and SLURM_RESTART_COUNT 0 or unset), so a restarted or requeued job can finish.
CRASH_IN_SAVE_ENV = "MDEQ_TEST_CRASH_IN_SAVE"
CRASH_IN_SAVE_EXIT_CODE = 86


def _zero_stage(engine: Any) -> int:
    try:
        return int(engine.zero_optimization_stage())
    except (AttributeError, TypeError):
        return 0


def weights_finite(engine: Any) -> bool:
    """True when this rank's share of the weights (and fp32 master copies, if any) is finite."""
    tensors: list[torch.Tensor] = []
    for param in engine.module.parameters():
        local = getattr(param, "ds_tensor", None)  # ZeRO-3: the local partition
        tensors.append(local if local is not None and param.numel() == 0 else param.data)
    optimizer = getattr(engine, "optimizer", None)
    for name in ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat", "fp32_groups_flat_partition"):
        for tensor in getattr(optimizer, name, None) or []:
            if isinstance(tensor, torch.Tensor):
                tensors.append(tensor)
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.numel())


class Checkpointer:
    """Saves committed checkpoints and finds/loads the one to resume from.

    One instance per rank, built from ``cfg`` (the ``checkpoint`` config section). ``config`` is the
    resolved run config as a plain dict (``dataclasses.asdict(cfg)``): it is stored in every marker
    and compared on resume to refuse breaking changes. ``run_id`` names this run in every marker
    (default: a fresh one; a resume adopts the resumed checkpoint's). The first ``find_resume``
    takes the folder's run lock (rank 0) and claims the folder (``ownership.claim_folder``);
    ``close()`` releases the lock - call it when the run ends, also on errors.
    """

    def __init__(self, cfg: CheckpointConfig, *, rank: int, world_size: int, config_hash: str,
                 config: dict[str, Any] | None = None, best_mode: str | None = None, run_id: str | None = None):
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.config_hash = config_hash
        self.config = config
        self.best_mode = best_mode or cfg.best_mode
        self.root = Path(cfg.dir)
        self._last_save_time = time.monotonic()
        self.last_committed: store.ResumePoint | None = None
        self.run_id = run_id or ownership.new_run_id()  # rank 0's is broadcast by find_resume
        self._lock: RunLock | None = None
        self._claimed = False
        self._durable = DurableWrites()

    check_compatible = staticmethod(check_compatible)  # (saved_config, config): raises naming breaking keys

    # ------------------------------------------------------------------------------------------
    # Resume

    def find_resume(self) -> store.ResumePoint | None:
        """The checkpoint to resume from, honouring ``cfg.resume`` (collective when distributed).

        ``never``: None. ``auto``: the newest committed checkpoint in ``cfg.dir`` whose files all
        verify; uncommitted or damaged ones are skipped with a warning; None when nothing was ever
        committed there; TrainerError listing the reasons when checkpoints were committed but none
        verifies (a run never silently starts over). A path (a ``step_*`` directory, or a directory
        of them): that checkpoint, or TrainerError. Rank 0 decides and broadcasts, so every rank
        loads the same one. Raises TrainerError naming the keys when the saved config cannot be
        resumed by this config.

        The first call also takes the run lock of ``cfg.dir`` and claims it for this run (see
        ``ownership.claim_folder``): another live run there, or another run's committed checkpoints,
        end in a TrainerError. Later calls (rollback after divergence) return this run's newest
        checkpoint that verifies.
        """
        found: dict[str, Any] | None = None
        error: str | None = None
        if self.rank == 0:
            try:
                point = self._open() if not self._claimed else self._newest_own()
                found = dataclasses.asdict(point) if point is not None else None
            except TrainerError as err:
                error = str(err)
            except (ImportError, OSError) as err:  # the environment, not the checkpoint: say so, on every rank
                error = (f"cannot read the checkpoints in {self.root}: {type(err).__name__}: {err}. This is an "
                         "error of the installation or the filesystem, not a damaged checkpoint; fix it and relaunch")
        found, run_id, error = broadcast_from_rank0((found, self.run_id, error))
        if error:
            self.close()
            raise TrainerError(error)
        self.run_id, self._claimed = run_id, True
        if found is None:
            return None
        point = store.ResumePoint(**found)
        if self.config is not None and point.config is not None and point.config_hash != self.config_hash:
            check_compatible(point.config, self.config)
        return point

    def _open(self) -> store.ResumePoint | None:
        """Rank 0, first call: lock the folder, choose the resume point, adopt its run, claim the folder."""
        if self._lock is None:
            self._lock = RunLock(self.root, stale_after_seconds=self.cfg.lock_stale_seconds)
            self._lock.acquire()
        point = None if self.cfg.resume == "never" else self._scan()
        if point is not None:
            self.run_id = point.run_id
        ownership.claim_folder(self.root, self.run_id, resuming=point is not None,
                               move_aside=self.cfg.move_other_runs_aside)
        return point

    def _newest_own(self) -> store.ResumePoint | None:
        point, _ = store.scan(self.root, check_hash=self.cfg.verify_hash, run_id=self.run_id)
        return point

    def _scan(self) -> store.ResumePoint | None:
        check_hash = self.cfg.verify_hash
        if self.cfg.resume == "auto":
            point, rejected = store.scan(self.root, check_hash=check_hash)
            if point is None and rejected:
                reasons = "; ".join(f"{d.name}: {why}" for d, why in rejected)
                raise TrainerError(
                    f"checkpoint.resume=auto: {self.root} holds committed checkpoints but none can be resumed "
                    f"({reasons}). Nothing was started over from step 0. Fix or restore them, resume an older "
                    "copy with checkpoint.resume=PATH, or start a new run with another checkpoint.dir.")
            return point
        path = Path(self.cfg.resume)
        if not path.is_dir():
            raise TrainerError(f"checkpoint.resume={self.cfg.resume!r}: no such directory; give a step_* "
                               "checkpoint directory, a directory of them, 'auto' or 'never'")
        if store.list_tag_dirs(path):  # a directory of checkpoints: the newest valid one
            point = store.newest_valid(path, check_hash=check_hash)
            if point is None:
                raise TrainerError(f"checkpoint.resume={self.cfg.resume!r}: no committed, readable checkpoint "
                                   "in it (see the warnings above)")
            return point
        try:
            return store.verify(path, check_hash=check_hash)
        except store.InvalidCheckpoint as why:
            raise TrainerError(f"checkpoint.resume={self.cfg.resume!r} cannot be used: {why}") from None

    def close(self) -> None:
        """Release the run lock (idempotent; every rank may call it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def load(self, engine: Any, point: store.ResumePoint) -> dict[str, Any]:
        """Load ``point`` into ``engine`` (collective); restore this rank's RNG; return its client state.

        Same world size: the returned dict is exactly the ``client_state`` this rank saved, and the
        python/numpy/torch/CUDA RNGs are as they were at the save. Different world size: every rank
        gets rank 0's client state plus ``resumed_from_world_size``; its ``loader_state`` describes
        the old layout, which the loader must rescale (``data_pipelines`` keeps the epoch and the
        consumed fraction of it); RNGs are not restored (no per-rank correspondence) - see
        docs/fault-tolerance.md. ZeRO-1/2/3 optimizer partitions are re-sharded (``universal.py``).
        DeepSpeed's files are read with ``weights_only=True`` (see ``files.install_safe_loader``).
        """
        install_safe_loader(engine)
        if point.world_size != self.world_size and point.zero_stage >= 1:
            from trainer.checkpoint.universal import load_resharded

            load_resharded(engine, point)
        else:
            load_path, _ = engine.load_checkpoint(point.parent, tag=point.tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if load_path is None:
                raise TrainerError(f"DeepSpeed could not load checkpoint {point.path}; see its log above")
        tag_dir = Path(point.path)
        if point.world_size == self.world_size:
            saved = json.loads((tag_dir / store.client_file(self.rank)).read_text())
            restore_rng_state(saved["rng"])
            client_state = saved["client_state"]
        else:
            saved = json.loads((tag_dir / store.client_file(0)).read_text())
            client_state = {**saved["client_state"], "resumed_from_world_size": point.world_size}
            if self.rank == 0:
                log.warning("resuming a %d-process checkpoint with %d processes: rank 0's loader state is given "
                            "to every rank and RNG states are not restored", point.world_size, self.world_size)
        self.last_committed = point
        self._last_save_time = time.monotonic()
        return client_state

    # ------------------------------------------------------------------------------------------
    # Save

    def should_save(self, step: int) -> bool:
        """True when ``step`` is due (every ``cfg.every_steps`` steps, or ``cfg.every_minutes`` since
        the last save). Collective when ``every_minutes > 0`` (rank 0's clock decides for all)."""
        due = self.cfg.every_steps > 0 and step % self.cfg.every_steps == 0
        if self.cfg.every_minutes > 0:
            late = (time.monotonic() - self._last_save_time) >= 60.0 * self.cfg.every_minutes
            due = broadcast_from_rank0(due or late)
        return bool(due)

    def tag_dir(self, step: int) -> Path:
        """The directory checkpoint ``step`` is (or will be) written to."""
        return self.root / store.tag_for_step(step)

    def save(self, engine: Any, step: int, client_state: dict[str, Any], metric: float | None = None,
             write_extra: Callable[[Path], None] | None = None) -> bool:
        """Write and commit checkpoint ``step_<step>`` (collective: every rank, same step).

        ``client_state`` is this rank's JSON-able state from the loop (global step, epoch, its
        ``loader_state``, MLflow run id, best metric, ...); the checkpointer adds this rank's RNG states
        and the config hash. Commit = every rank finished writing (barrier), then rank 0 writes
        the marker atomically, then a barrier. Afterwards rank 0 applies retention (keep_last +
        best). ``write_extra(tag_dir)``, if given, is called on every rank after DeepSpeed's files are
        written and before the commit (e.g. a consolidated ``model.pt`` written by rank 0): its files
        are part of the checkpoint, listed and hashed in the marker, and deleted with it. Files put
        into ``tag_dir`` before ``save`` are removed (an unfinished directory is cleared first).
        Returns False (nothing written) when ``step`` is already committed. Raises
        TrainerError when any rank's weights are non-finite: such a state is never saved.
        """
        try:
            json.dumps(client_state)
        except (TypeError, ValueError) as err:
            raise TrainerError(f"client_state must be JSON-serialisable (it is never pickled): {err}") from None
        if metric is not None and not math.isfinite(metric):
            metric = None
        if any_rank(not weights_finite(engine)):
            raise TrainerError(f"refusing to save checkpoint at step {step}: the weights contain NaN/Inf "
                               "(the divergence guard should have skipped that update)")
        tag = store.tag_for_step(step)
        tag_dir = self.tag_dir(step)
        skip = False
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            skip = self._clear_for_save(tag_dir)
        if broadcast_from_rank0(skip):
            return False
        # Durable before the barrier: every file this rank wrote (DeepSpeed's, write_extra's, its
        # client JSON) and the folders holding them are fsynced, so once the marker exists a machine
        # crash cannot leave it pointing at a missing or short file.
        with self._durable.around(tag_dir):
            engine.save_checkpoint(str(self.root), tag=tag, client_state={"mdeq_step": step}, save_latest=False)
            if write_extra is not None:
                write_extra(tag_dir)
        (tag_dir / store.CLIENT_DIR).mkdir(parents=True, exist_ok=True)
        atomic_write_json(tag_dir / store.client_file(self.rank), {
            "rank": self.rank, "world_size": self.world_size, "step": step,
            "client_state": client_state, "rng": capture_rng_state(),
        })
        self._durable.finish(tag_dir)  # (the client JSON fsynced itself and client/)
        self._maybe_crash(step)
        barrier()  # every rank's files are on disk
        if self.rank == 0:
            marker = {
                "format_version": store.FORMAT_VERSION, "tag": tag, "step": step, "run_id": self.run_id,
                "world_size": self.world_size, "zero_stage": _zero_stage(engine),
                "config_hash": self.config_hash, "config": self.config, "metric": metric,
                "client_state": client_state, "committed_at": time.time(),
                "files": describe_files(tag_dir, with_hash=self.cfg.verify_hash),
            }
            atomic_write_json(tag_dir / store.MARKER, marker)
            deleted = store.apply_retention(self.root, self.cfg.keep_last, self.cfg.keep_best, self.best_mode,
                                            run_id=self.run_id)
            if deleted:
                log.info("retention deleted %s", ", ".join(d.name for d in deleted))
        barrier()  # nobody exits (e.g. on preemption) before the marker is written
        self._last_save_time = time.monotonic()
        self.last_committed = store.ResumePoint(
            path=str(tag_dir), tag=tag, step=step, world_size=self.world_size, zero_stage=_zero_stage(engine),
            config_hash=self.config_hash, config=self.config, metric=metric, client_state=client_state,
            run_id=self.run_id)
        return True

    def _clear_for_save(self, tag_dir: Path) -> bool:
        """Rank 0: True when this run already committed ``tag_dir`` intact; else make room for the save.

        An unfinished save is removed; this run's own damaged commit is replaced; anything committed
        by another run (or with an unreadable marker) is moved aside, never deleted.
        """
        if not tag_dir.exists():
            return False
        owner = store.committed_owner(tag_dir)
        if owner == self.run_id:
            try:
                store.verify(tag_dir, check_hash=False)
                return True
            except store.InvalidCheckpoint as why:
                log.warning("replacing this run's damaged checkpoint %s (%s)", tag_dir, why)
        elif store.is_committed(tag_dir):
            target = ownership.set_aside_folder(self.root, f"{owner or 'unreadable-marker'}")
            log.warning("%s was committed by %s, not this run (%s): moving it to %s", tag_dir,
                        f"run {owner}" if owner else "an unreadable marker", self.run_id, target)
            ownership.move_folder(tag_dir, target)
            return False
        else:
            log.warning("removing unfinished checkpoint %s before saving it again", tag_dir)
        store.remove_checkpoint(tag_dir)
        return False

    def _maybe_crash(self, step: int) -> None:
        spec = os.environ.get(CRASH_IN_SAVE_ENV)
        if not spec:
            return
        at_step, at_rank, how = (spec.split(":") + ["", ""])[:3]
        first_generation = all(os.environ.get(name, "0") == "0"
                               for name in ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"))
        if int(at_step) == step and int(at_rank or 0) == self.rank and first_generation:
            log.error("%s=%s: dying in the middle of the save (test fault injection)", CRASH_IN_SAVE_ENV, spec)
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(CRASH_IN_SAVE_EXIT_CODE)
