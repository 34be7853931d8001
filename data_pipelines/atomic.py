"""Durable file writes: whole-or-nothing replacement and fsync of files and their directories.

One helper for everything that must survive a crash of the process *or of the machine*: shard
files and their records (``data_pipelines.shards.writer``) and checkpoints (``trainer.checkpoint``).
A rename is only durable once the directory holding it is fsynced, and a file's bytes only once the
file is fsynced: ``os.replace`` alone protects against a dying process, not against a lost page
cache (power loss, a kernel panic, a node reboot).

It lives in ``data_pipelines`` because that package imports nothing of the others; the trainer
imports it from here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def fsync_file(path: str | os.PathLike) -> None:
    """Flush ``path``'s data and metadata to stable storage (whoever wrote it in this host)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make creations, renames and deletions of entries in directory ``path`` durable.

    A no-op where directories cannot be opened or fsynced (some network filesystems refuse it;
    they commit metadata operations synchronously anyway).
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the complete file ``tmp`` over ``final``: its bytes first, then the rename, both on disk."""
    fsync_file(tmp)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers (and a rebooted machine) see the old file or the new one."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, data: Any, **dumps_options: Any) -> None:
    atomic_write_text(path, json.dumps(data, **dumps_options))
