"""The on-disk layout of committed checkpoints, their validation, and retention.

::

    <checkpoint.dir>/
      step_000000120/                     one checkpoint = one DeepSpeed tag directory
        mp_rank_00_model_states.pt        DeepSpeed's files (model, optimizer, scheduler)
        zero_pp_rank_*_optim_states.pt    (ZeRO >= 1: one per data-parallel rank)
        client/rank_00000.json            per-rank client state + RNG states (JSON, never pickled)
        COMMITTED.json                    the marker: written last, atomically, by rank 0

A directory without ``COMMITTED.json`` is an unfinished save and is never resumed from. The marker
lists every file with its size and SHA-256, so a truncated or corrupted file is detected before
anything is loaded, and names the run that wrote it (``run_id``, see ``ownership.py``): retention and
"already committed" only ever look at the current run's checkpoints. DeepSpeed's ``latest`` file is
never written or read.

Only a file that fails to *parse* (or to match its committed size/hash) makes a checkpoint invalid;
an error of the environment (a missing package, an unreadable disk) propagates as itself instead of
passing for a damaged checkpoint.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.checkpoint.files import sha256_file, unsafe_globals

log = logging.getLogger(__name__)

MARKER = "COMMITTED.json"
CLIENT_DIR = "client"
FORMAT_VERSION = 1
LEGACY_RUN_ID = "legacy"  # the owner of markers written before run ids existed
# What torch raises for a file that is not a (complete) torch file: a damaged checkpoint.
_PARSE_ERRORS = (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError)
_TAG_RE = re.compile(r"^step_(\d{9,})$")


def tag_for_step(step: int) -> str:
    return f"step_{step:09d}"


def client_file(rank: int) -> str:
    return f"{CLIENT_DIR}/rank_{rank:05d}.json"


@dataclass
class ResumePoint:
    """A committed, verified checkpoint to resume from (plain data: JSON-able, same on every rank)."""

    path: str  # the tag directory
    tag: str
    step: int  # the global optimizer step that had completed when it was saved
    world_size: int  # processes that saved it
    zero_stage: int
    config_hash: str
    config: dict[str, Any] | None  # resolved config it was saved with (None if not given)
    metric: float | None  # the metric passed to save(), used for keep_best
    client_state: dict[str, Any] = field(default_factory=dict)  # rank 0's client state
    run_id: str = LEGACY_RUN_ID  # the run that committed it (see ownership.py)

    @property
    def parent(self) -> str:
        return str(Path(self.path).parent)


class InvalidCheckpoint(Exception):
    """A checkpoint directory that must not be resumed from; the message says why."""


def owner_of(marker: dict[str, Any]) -> str:
    """The run id a parsed commit marker belongs to."""
    return str(marker.get("run_id") or LEGACY_RUN_ID)


def read_marker(tag_dir: Path) -> dict[str, Any]:
    marker_path = tag_dir / MARKER
    if not marker_path.is_file():
        raise InvalidCheckpoint("no commit marker (the save did not finish)")
    try:
        marker = json.loads(marker_path.read_bytes())
    except ValueError as err:
        raise InvalidCheckpoint(f"unreadable commit marker ({err})") from None
    if not isinstance(marker, dict) or marker.get("format_version") != FORMAT_VERSION:
        raise InvalidCheckpoint(f"commit marker of an unknown format (expected version {FORMAT_VERSION})")
    return marker


def verify(tag_dir: Path, *, check_hash: bool = True) -> ResumePoint:
    """The ResumePoint of a committed checkpoint, or ``InvalidCheckpoint`` saying what is wrong.

    Checks: marker present and parseable; every listed file present with its size (and SHA-256
    when recorded and ``check_hash``); every torch file's pickle imports only allow-listed globals
    (scanned without unpickling); every per-rank JSON parses.
    """
    marker = read_marker(tag_dir)
    for rel, info in marker["files"].items():
        path = tag_dir / rel
        if not path.is_file():
            raise InvalidCheckpoint(f"missing file {rel}")
        size = path.stat().st_size
        if size != info["size"]:
            raise InvalidCheckpoint(f"{rel} has {size} bytes, {info['size']} were committed (truncated?)")
        if check_hash and info.get("sha256") and sha256_file(path) != info["sha256"]:
            raise InvalidCheckpoint(f"{rel} does not match its committed SHA-256 (corrupted)")
        if rel.endswith(".pt"):
            try:
                bad = unsafe_globals(path)
            except _PARSE_ERRORS as err:
                raise InvalidCheckpoint(f"{rel} is not a readable torch file ({type(err).__name__}: {err})") from None
            if bad:
                raise InvalidCheckpoint(f"{rel} would import non-allow-listed code {bad}; refusing to load it")
    for rank in range(marker["world_size"]):
        path = tag_dir / client_file(rank)
        if not path.is_file():
            raise InvalidCheckpoint(f"missing {client_file(rank)}")
        try:
            json.loads(path.read_bytes())
        except ValueError as err:
            raise InvalidCheckpoint(f"unreadable {client_file(rank)} ({err})") from None
    return ResumePoint(path=str(tag_dir), tag=marker["tag"], step=marker["step"], world_size=marker["world_size"],
                       zero_stage=marker["zero_stage"], config_hash=marker["config_hash"],
                       config=marker.get("config"), metric=marker.get("metric"),
                       client_state=marker.get("client_state", {}), run_id=owner_of(marker))


def list_tag_dirs(root: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of every ``step_*`` directory under ``root``, newest first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _TAG_RE.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found, reverse=True)


def newest_valid(root: Path, *, check_hash: bool = True) -> ResumePoint | None:
    """The newest committed, verified checkpoint under ``root``; skipped ones are logged as warnings."""
    return scan(root, check_hash=check_hash)[0]


def scan(root: Path, *, check_hash: bool = True, run_id: str | None = None
         ) -> tuple[ResumePoint | None, list[tuple[Path, str]]]:
    """``(newest committed checkpoint that verifies or None, [(committed folder skipped, why)])``.

    ``run_id``: only that run's checkpoints. Unfinished saves (no marker) are skipped with a warning
    but are no reason: they were never committed. Errors of the environment (``ImportError``,
    ``OSError``...) propagate.
    """
    rejected: list[tuple[Path, str]] = []
    for _step, tag_dir in list_tag_dirs(root):
        if run_id is not None and committed_owner(tag_dir) != run_id:
            continue
        try:
            return verify(tag_dir, check_hash=check_hash), rejected
        except InvalidCheckpoint as why:
            log.warning("skipping checkpoint %s: %s", tag_dir, why)
            if is_committed(tag_dir):
                rejected.append((tag_dir, str(why)))
    return None, rejected


def is_committed(tag_dir: Path) -> bool:
    return (tag_dir / MARKER).is_file()


def remove_checkpoint(tag_dir: Path) -> None:
    """Delete a checkpoint: the marker first, so a half-deleted directory is never 'committed'."""
    (tag_dir / MARKER).unlink(missing_ok=True)
    shutil.rmtree(tag_dir, ignore_errors=True)


def committed_owner(tag_dir: Path) -> str | None:
    """The run that committed ``tag_dir`` (None: not committed, or its marker does not parse)."""
    if not is_committed(tag_dir):
        return None
    try:
        return owner_of(read_marker(tag_dir))
    except InvalidCheckpoint:
        return None


def apply_retention(root: Path, keep_last: int, keep_best: bool, best_mode: str,
                    run_id: str = LEGACY_RUN_ID) -> list[Path]:
    """Delete all but the newest ``keep_last`` committed checkpoints of run ``run_id`` (+ its best).

    Returns the deleted dirs. Called by rank 0 only right after a commit, so every directory older
    than the newest committed one is either committed or a dead, unfinished save; unfinished ones
    newer than it are kept (nothing else is saving now, but be conservative). Checkpoints committed
    by another run are never counted nor deleted.
    """
    tags = [(step, d) for step, d in list_tag_dirs(root) if not is_committed(d) or committed_owner(d) == run_id]
    committed = [(step, d) for step, d in tags if is_committed(d)]
    if not committed:
        return []
    keep = {d for _, d in committed[:keep_last]}
    if keep_best:
        scored = []
        for _, d in committed:
            try:
                metric = read_marker(d).get("metric")
            except InvalidCheckpoint:
                continue
            if metric is not None:
                scored.append((metric, d))
        if scored:
            best = max(scored, key=lambda x: x[0]) if best_mode == "max" else min(scored, key=lambda x: x[0])
            keep.add(best[1])
    newest_step = committed[0][0]
    deleted = []
    for step, d in tags:
        if d in keep or step > newest_step:
            continue
        remove_checkpoint(d)
        deleted.append(d)
    return deleted
