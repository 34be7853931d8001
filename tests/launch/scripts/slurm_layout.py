"""What a rank started by a SLURM job sees: layout, node and CPUs as one JSON line (no torch: cheap)."""

import json
import os
import socket

NAMES = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
         "SLURM_NODEID", "SLURM_PROCID", "SLURMD_NODENAME", "MDEQ_TEST_MARKER", "PYTHONUNBUFFERED"]
seen = {name: os.environ.get(name) for name in NAMES}
seen["hostname"] = socket.gethostname()
seen["cpus"] = len(os.sched_getaffinity(0))  # the cores srun bound this task to
print("ENV " + json.dumps(seen), flush=True)
