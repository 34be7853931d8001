"""A rank that idles until SLURM's early warning (USR1), then reports it, as a checkpointing rank would."""

import os
import signal
import sys
import time

rank = os.environ.get("RANK", "?")


def on_usr1(signum, frame):
    print(f"USR1 rank {rank}: checkpoint committed", flush=True)
    sys.exit(0)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"READY rank {rank}", flush=True)
deadline = time.time() + 60
while time.time() < deadline:
    time.sleep(0.1)
sys.exit(3)  # never warned
