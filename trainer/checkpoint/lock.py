"""One training run per checkpoint folder: a lock file with its holder and a heartbeat.

``<checkpoint.dir>/RUN.lock`` holds JSON naming the holder (host, pid, the process's start time,
when the run took the lock). It is created with a hard link from a complete temporary file - an
atomic "create if absent" that also holds on NFS, where ``O_EXCL`` was not always reliable - so a
reader never sees a half-written lock. The holder touches the file every ``heartbeat_seconds``
(a daemon thread), so its mtime says when it was last known alive.

A lock is *stale*, and taken over with a warning, when its holder is on this host and that
process is gone (or the pid now belongs to another process), or when it is on another host and
the heartbeat is older than ``stale_after_seconds`` (``checkpoint.lock_stale_seconds``). Ages are
measured with the file server's clock (a probe file's mtime), so clock skew between hosts does
not matter. Only rank 0 of a job takes the lock.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from data_pipelines.atomic import fsync_dir
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

LOCK_NAME = "RUN.lock"


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/pid/stat), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """The lock of one checkpoint folder (``acquire`` / ``release``; a context manager too)."""

    def __init__(self, root: Path, *, stale_after_seconds: float = 600.0, heartbeat_seconds: float | None = None):
        self.root = Path(root)
        self.path = self.root / LOCK_NAME
        self.stale_after_seconds = stale_after_seconds
        self.heartbeat_seconds = heartbeat_seconds or max(1.0, min(60.0, stale_after_seconds / 10))
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """The current lock's content (None when there is no lock; ``{}`` when it is unreadable)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def _server_now(self) -> float:
        probe = self.root / f".lock-probe-{socket.gethostname()}-{os.getpid()}"
        probe.write_bytes(b"")
        try:
            return probe.stat().st_mtime
        finally:
            probe.unlink(missing_ok=True)

    def _heartbeat_age(self) -> float | None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        return self._server_now() - mtime

    def stale_reason(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder`` no longer holds the folder, or None when it does."""
        host, pid = holder.get("host"), holder.get("pid")
        if host == socket.gethostname() and isinstance(pid, int):
            if not _alive(pid):
                return f"process {pid} on this host is gone"
            if holder.get("process_start") and _process_start(pid) != holder["process_start"]:
                return f"pid {pid} on this host now belongs to another process"
            if pid == os.getpid():
                return "it was taken by this process, whose earlier run did not release it"
            return None
        age = self._heartbeat_age()
        if age is not None and age > self.stale_after_seconds:
            return (f"no heartbeat from host {host} for {age:.0f} s (checkpoint.lock_stale_seconds="
                    f"{self.stale_after_seconds:g})")
        return None

    # ------------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the lock, taking over a stale one with a warning; ``TrainerError`` if a live run holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        mine = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "token": self.token}
        tmp = self.root / f".{LOCK_NAME}.{self.token}"
        tmp.write_text(json.dumps(mine))
        try:
            for _attempt in range(5):
                try:
                    os.link(tmp, self.path)
                    fsync_dir(self.root)
                    break
                except FileExistsError:
                    pass
                holder = self.holder()
                if holder is None:
                    continue  # released meanwhile: try again
                if not holder:
                    raise TrainerError(f"{self.path} is unreadable: if no run uses checkpoint.dir={self.root}, "
                                       "delete that file and start again")
                reason = self.stale_reason(holder)
                if reason is None:
                    raise TrainerError(
                        f"checkpoint.dir={self.root} is in use by a running training run: host "
                        f"{holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started_at')} "
                        f"(lock file {self.path}). Wait for it to finish, or give this run another "
                        "checkpoint.dir; if that run is really gone, delete the lock file.")
                self._take_over(holder, reason)
            else:
                raise TrainerError(f"could not take {self.path}: other runs keep taking it; try again")
        finally:
            tmp.unlink(missing_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="mdeq-run-lock", daemon=True)
        self._thread.start()

    def _take_over(self, holder: dict[str, Any], reason: str) -> None:
        # Move the stale lock away under a unique name; if another taker was faster, the rename fails
        # or the content changed, and the next attempt sees the new holder.
        if self.holder() != holder:
            return
        try:
            os.rename(self.path, self.root / f".{LOCK_NAME}.stale-{self.token}")
        except FileNotFoundError:
            return
        (self.root / f".{LOCK_NAME}.stale-{self.token}").unlink(missing_ok=True)
        log.warning("taking over the lock of checkpoint.dir=%s from host %s, pid %s, started %s: %s", self.root,
                    holder.get("host"), holder.get("pid"), holder.get("started_at"), reason)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            holder = self.holder()
            if not holder or holder.get("token") != self.token:
                log.error("the lock of checkpoint.dir=%s was taken by another run (%s): this run no longer "
                          "owns the folder", self.root, holder)
                return
            try:
                os.utime(self.path)
            except OSError as err:
                log.warning("could not refresh %s: %s", self.path, err)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        holder = self.holder()
        if holder and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
            fsync_dir(self.root)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
