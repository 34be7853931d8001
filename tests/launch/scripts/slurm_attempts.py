"""Each attempt of a requeued job (SLURM_RESTART_COUNT) ends differently: attempt 0 waits until SLURM
ends it (the test runs ``scontrol requeue``), every later one fails (rank 1 exits 1)."""

import os
import signal
import sys
import time

attempt, rank = int(os.environ.get("SLURM_RESTART_COUNT", "0")), os.environ["RANK"]
print(f"ATTEMPT {attempt} RANK {rank}", flush=True)
if attempt == 0:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(75))  # as a training rank does after its commit
    time.sleep(300)
if rank == "1":
    sys.exit("rank 1 fails on purpose")
