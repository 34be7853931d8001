"""Which run a checkpoint folder belongs to, and what a new run may do with another run's commits.

Every ``COMMITTED.json`` names its run (``run_id``, drawn once when a run starts fresh and carried
through every resume) and the config hash. A run only ever resumes, counts ("already committed")
and deletes (retention) its *own* checkpoints, and it never shares ``checkpoint.dir`` with another
run's committed ones: it refuses, or - with ``checkpoint.move_other_runs_aside`` - moves them into
``<checkpoint.dir>/set-aside/`` (never deletes them). Markers written before run ids existed belong
to one run called ``legacy``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections import defaultdict
from pathlib import Path

from data_pipelines.atomic import fsync_dir
from trainer.checkpoint import store
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

SET_ASIDE_DIR = "set-aside"


def config_hash(resolved: dict) -> str:
    """A short stable hash of the resolved config (stored in every commit marker)."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def new_run_id() -> str:
    """A fresh run id: UTC start time (sorts by age, readable) plus a random suffix (unique)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:8]


def committed_by_run(root: Path) -> dict[str, list[int]]:
    """``{run id: [steps, newest first]}`` of every ``step_*`` folder with a commit marker.

    A marker that does not parse names no run: such a folder is neither resumed nor deleted, and
    a save of that step moves it aside (``Checkpointer.save``).
    """
    runs: dict[str, list[int]] = defaultdict(list)
    for step, tag_dir in store.list_tag_dirs(root):
        if not store.is_committed(tag_dir):
            continue
        try:
            runs[store.owner_of(store.read_marker(tag_dir))].append(step)
        except store.InvalidCheckpoint:
            continue
    return dict(runs)


def _describe(runs: dict[str, list[int]]) -> str:
    parts = []
    for run_id, steps in sorted(runs.items()):
        shown = ", ".join(str(s) for s in sorted(steps)[:6]) + (", ..." if len(steps) > 6 else "")
        parts.append(f"run {run_id} (step{'s' if len(steps) > 1 else ''} {shown})")
    return "; ".join(parts)


def claim_folder(root: Path, run_id: str, *, resuming: bool, move_aside: bool) -> list[Path]:
    """Make sure ``root`` holds no committed checkpoint of a run other than ``run_id``.

    Other runs' checkpoints make this run refuse (``TrainerError``, exit 2, naming the folder and the
    choices) unless ``move_aside``: then every ``step_*`` folder that is not this run's committed
    checkpoint (other runs' commits, and - on a fresh start - unfinished saves too) is moved into
    ``root/set-aside/<UTC time>-<run ids>/``. Returns the folders moved.
    """
    runs = committed_by_run(root)
    others = {rid: steps for rid, steps in runs.items() if rid != run_id}
    if not others:
        return []
    if not move_aside:
        start = "resumes a run" if resuming else "starts a fresh run"
        raise TrainerError(
            f"checkpoint.dir={root} holds committed checkpoints of another run: {_describe(others)}. This "
            f"{start} there (run {run_id}); sharing the folder would mix the runs up (retention, resume "
            "and `mdeq eval` would pick the other run's steps). Choose one: another checkpoint.dir for this "
            "run; resume that run instead (checkpoint.resume=auto, with its config); or "
            f"checkpoint.move_other_runs_aside=true to move them to {root / SET_ASIDE_DIR}/ (nothing is deleted).")
    target = set_aside_folder(root, "-".join(sorted(others)))
    moved = []
    for _step, tag_dir in store.list_tag_dirs(root):
        if store.committed_owner(tag_dir) == run_id or (resuming and not store.is_committed(tag_dir)):
            continue  # a resumed run keeps its own unfinished saves: the next save of that step replaces them
        moved.append(move_folder(tag_dir, target))
    log.warning("moved %d checkpoint folder(s) of %s aside to %s", len(moved), _describe(others), target)
    return moved


def set_aside_folder(root: Path, label: str) -> Path:
    """A new folder ``root/set-aside/<UTC time>-<label>[-n]/`` to move checkpoints into."""
    base = root / SET_ASIDE_DIR / (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + label)
    target, n = base, 1
    while target.exists():
        target, n = base.with_name(f"{base.name}-{n}"), n + 1
    target.mkdir(parents=True)
    return target


def move_folder(tag_dir: Path, target: Path) -> Path:
    """Move the checkpoint folder ``tag_dir`` into ``target`` (a rename: nothing is copied or deleted)."""
    moved = target / tag_dir.name
    tag_dir.rename(moved)
    fsync_dir(target)
    fsync_dir(tag_dir.parent)
    return moved

