"""Cooperative preemption: a signal sets a flag; ranks agree at a step boundary, save, exit.

SLURM sends SIGTERM (or ``--signal=USR1@N`` early) to every task, torchrun forwards SIGTERM to its
workers, and the launchers allow ~30 s before SIGKILL. A signal handler must not save a checkpoint
itself (collectives from inside a handler deadlock), so it only records the request; the loop asks
``should_stop()`` once per optimizer step, which all-reduces the flag so every rank stops at the
*same* step, then saves and exits with ``PREEMPTED_EXIT_CODE``.

The grace time is a promise to the scheduler: ``grace_seconds`` after the first signal the process
is gone. Normally it has committed and exited long before; if a step (or the save) is still running
then, a watchdog ends the process with ``PREEMPTED_EXIT_CODE`` anyway - an unfinished save is never
committed, so the relaunch continues from the previous committed checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

from trainer.fault.collectives import any_rank
from trainer.fault.exit_codes import PREEMPTED_EXIT_CODE

log = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionHandler:
    """Turns SIGTERM/SIGUSR1 into a flag that all ranks agree on at a step boundary.

    Usage (every rank)::

        preemption = PreemptionHandler(grace_seconds=cfg.checkpoint.grace_seconds).install()
        for step in ...:
            ...train one step...
            if preemption.should_stop():          # collective
                checkpointer.save(engine, step, client_state)
                return PREEMPTED_EXIT_CODE
        preemption.uninstall()
    """

    def __init__(self, grace_seconds: float = 20.0, signals: tuple[int, ...] = DEFAULT_SIGNALS,
                 enforce_grace: bool = True):
        self.grace_seconds = grace_seconds
        self.signals = signals
        self.enforce_grace = enforce_grace  # exit when the grace time runs out (see module docstring)
        self._watchdog: threading.Timer | None = None
        self.signal_received: int | None = None  # signal number of the first request
        self.requested_at: float | None = None  # time.monotonic() of the first request
        self._previous: dict[int, Any] = {}

    def install(self) -> PreemptionHandler:
        """Register the handlers (main thread only); returns ``self``."""
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def uninstall(self) -> None:
        """Restore the handlers that were there before ``install()`` and stop the grace watchdog."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag (and arm the watchdog): no I/O, no collectives inside a signal handler.
        if self.signal_received is None:
            self.signal_received = signum
            self.requested_at = time.monotonic()
            self._arm_watchdog()

    def _arm_watchdog(self) -> None:
        if self.enforce_grace and self._watchdog is None:
            self._watchdog = threading.Timer(self.grace_seconds, self._grace_expired)
            self._watchdog.daemon = True
            self._watchdog.start()

    def _grace_expired(self) -> None:
        sys.stderr.write(f"preemption: no checkpoint committed within checkpoint.grace_seconds="
                         f"{self.grace_seconds:g} s of the signal; exiting with {PREEMPTED_EXIT_CODE} (the "
                         "relaunch resumes from the previous committed checkpoint)\n")
        sys.stderr.flush()
        os._exit(PREEMPTED_EXIT_CODE)

    def request(self, signum: int = signal.SIGTERM) -> None:
        """Ask for a stop as if ``signum`` had arrived (tests, or the loop's own time limit)."""
        self._on_signal(signum, None)

    @property
    def requested_locally(self) -> bool:
        """True once this rank received a signal (no communication)."""
        return self.signal_received is not None

    def should_stop(self) -> bool:
        """True on every rank when any rank received a signal (collective: call on all ranks each step)."""
        stop = any_rank(self.requested_locally)
        if stop and self.requested_at is None:
            self.requested_at = time.monotonic()  # another rank got the signal: start our clock too
            self._arm_watchdog()
        return stop

    def seconds_left(self) -> float:
        """Grace time left since the request (``grace_seconds`` when nothing was requested)."""
        if self.requested_at is None:
            return self.grace_seconds
        return self.grace_seconds - (time.monotonic() - self.requested_at)
