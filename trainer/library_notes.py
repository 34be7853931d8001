"""What the libraries say, adjusted to what a user needs to read.

DeepSpeed compiles its CPU shared-memory communication op the first time a process group is set
up on a machine (about a minute of silence on a small CPU); ``announce_op_build`` says so before
it starts. Its ZeRO engine warns "untested optimizer" on every run for the torch optimizers this
project passes on purpose (SGD/Adam/AdamW, tested here under ZeRO 0-3); ``silence_known_warnings``
drops that one message and nothing else. While another process builds the op, torch waits on an
advisory lock (``flock`` of the build folder's ``lock`` file, which stays there by design and is no
sign of a stale build): ``build_in_progress`` says so, so a wait of minutes is not silent.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

SHM_OP_NAME = "deepspeed_shm_comm"
KNOWN_HARMLESS = ("You are using ZeRO with an untested optimizer",)


class _DropKnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in KNOWN_HARMLESS)


def silence_known_warnings() -> None:
    """Drop DeepSpeed's warnings listed in ``KNOWN_HARMLESS`` (idempotent)."""
    logger = logging.getLogger("DeepSpeed")
    if not any(isinstance(f, _DropKnownHarmless) for f in logger.filters):
        logger.addFilter(_DropKnownHarmless())


def _op_build_dir() -> Path | None:
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(SHM_OP_NAME, verbose=False))
    except Exception:  # a private helper of torch: without it, say nothing rather than fail
        return None


def op_needs_build(build_dir: Path) -> bool:
    """Whether torch's JIT loader will compile the op in ``build_dir``: no library yet, or ninja has work
    (e.g. object files another process's interrupted build removed)."""
    if not any(build_dir.glob(f"{SHM_OP_NAME}*.so")) or not (build_dir / "build.ninja").is_file():
        return True
    try:
        dry_run = subprocess.run(["ninja", "-n", "-C", str(build_dir)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False  # cannot tell: stay quiet rather than announce a build that may not happen
    return "no work to do" not in dry_run.stdout


def build_in_progress(build_dir: Path) -> bool:
    """Whether another process holds torch's build lock in ``build_dir`` now (an ``flock``, released by
    the kernel when its holder exits, so a killed build never blocks later runs)."""
    import fcntl

    try:
        fd = os.open(build_dir / "lock", os.O_RDWR)
    except OSError:
        return False  # no lock file: nobody has built here yet
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def announce_op_build() -> None:
    """On a CPU-only machine whose extension cache lacks DeepSpeed's shm op, say it is being built
    (local rank 0 only; to stderr, so ``--json`` output stays parseable)."""
    import torch

    if torch.cuda.is_available() or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    build_dir = _op_build_dir()
    if build_dir is None:
        return
    if build_in_progress(build_dir):
        print(f"waiting for another process's build of DeepSpeed's {SHM_OP_NAME} op in {build_dir}", file=sys.stderr,
              flush=True)
    if not op_needs_build(build_dir):
        return
    print(f"building DeepSpeed's CPU communication op {SHM_OP_NAME} (first run on this machine, about a "
          f"minute; cached in {build_dir})", file=sys.stderr, flush=True)
