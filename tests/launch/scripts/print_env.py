"""What a launched rank sees: its layout variables as one JSON line (no torch: cheap to start)."""

import json
import os

NAMES = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
         "SLURM_NODEID", "SLURM_PROCID", "MDEQ_TEST_MARKER", "PYTHONUNBUFFERED"]
print("ENV " + json.dumps({name: os.environ.get(name) for name in NAMES}), flush=True)
