"""Keep DataLoader workers alive through a scheduler's stop signal, so their rank can checkpoint.

SLURM (and ``timeout``, and ``srun`` forwarding ``kill -USR1``) signal *every* process of a job,
loader workers included. PyTorch's workers die on SIGTERM/SIGUSR1, the rank's SIGCHLD handler then
raises "DataLoader worker ... is killed by signal" wherever the rank happens to be - before the
trainer's preemption handler (``trainer.fault.PreemptionHandler``) can reach a step boundary and
save. ``ignore_stop_signals`` (a ``worker_init_fn``) blocks both signals in the worker and lets a
thread decide by sender: a signal from the worker's own parent (the DataLoader shutting it down)
still ends it at once; any other sender is ignored - the rank stops its workers itself when it
exits, and a worker whose parent is gone exits by PyTorch's own watchdog.
"""

from __future__ import annotations

import os
import signal
import threading

STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}


def _wait_for_parent_signal(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo(STOP_SIGNALS)
        if info.si_pid == parent or os.getppid() != parent:
            os._exit(0)  # exit code 0: the parent's SIGCHLD handler does not treat it as a crash


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn``: ignore SIGTERM/SIGUSR1 unless the parent (the rank) sends them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    threading.Thread(target=_wait_for_parent_signal, args=(os.getppid(),), daemon=True,
                     name="stop-signal-filter").start()
