"""Rank 1 fails on the first attempt; every rank reports its attempt (torchrun's restart counter)."""

import os
import sys

attempt, rank = os.environ["TORCHELASTIC_RESTART_COUNT"], os.environ["RANK"]
print(f"ATTEMPT {attempt} RANK {rank} WORLD {os.environ['WORLD_SIZE']}", flush=True)
if attempt == "0" and rank == "1":
    sys.exit("rank 1 fails once on purpose")
