"""Each attempt of a requeued job (SLURM_RESTART_COUNT) ends differently: attempt 0 as a preempted job
does (every rank exits 75), every later one as a failed step (rank 1 exits 1)."""

import os
import sys

attempt, rank = int(os.environ.get("SLURM_RESTART_COUNT", "0")), os.environ["RANK"]
print(f"ATTEMPT {attempt} RANK {rank}", flush=True)
if attempt == 0:
    sys.exit(75)
if rank == "1":
    sys.exit("rank 1 fails on purpose")
