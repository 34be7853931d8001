"""Distributed state, device and seeds: set up once per process by ``setup_distributed``.

Works under torchrun and the DeepSpeed launcher (which export RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and as a plain single process: without those variables it exports a
one-process layout itself (DeepSpeed would otherwise try MPI discovery and fail on a missing mpi4py).
Nothing happens at import time.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Layout:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "nccl" on GPUs, "gloo" on CPU

    @property
    def is_main(self) -> bool:
        """This rank does the I/O shared by all ranks (logs, tracking, summary files)."""
        return self.rank == 0


_OWN_GROUP = False  # True when setup_distributed created the process group (teardown destroys it)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it), for a rendezvous on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def launcher_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 for a plain process); readable before any set-up."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _ensure_env() -> None:
    """Export a single-process layout when no launcher did."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        os.environ.setdefault("LOCAL_RANK", "0")
        return
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_distributed(seed: int, deepspeed_comm: bool = True) -> Layout:
    """Initialise the process group (via DeepSpeed), pick the device and seed every RNG.

    Every rank is seeded with the same ``seed`` so that model construction is identical on all
    ranks; call ``seed_everything(seed + layout.rank)`` afterwards for per-rank randomness (dropout).
    ``deepspeed_comm=False`` (evaluation, no engine) makes a plain torch group: DeepSpeed's comm
    layer would compile its CPU op first, a minute on a new machine, for collectives torch has.
    """
    import torch.distributed as dist

    _ensure_env()
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    global _OWN_GROUP
    if not dist.is_initialized():
        from trainer.fault.restarts import init_process_group_for_restarts
        from trainer.library_notes import announce_op_build

        created = init_process_group_for_restarts(backend)  # fresh store keys per torchrun restart (fault helper)
        if deepspeed_comm:
            import deepspeed

            announce_op_build()
            deepspeed.init_distributed(dist_backend=backend, verbose=False)
        elif not created:
            dist.init_process_group(backend)  # env:// from the launcher, or the one-process layout above
        _OWN_GROUP = True
    layout = Layout(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                    device=device, backend=backend)
    seed_everything(seed)
    return layout


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group); returns ``tensor``."""
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def teardown(engine=None) -> None:
    """Release the engine and, if ``setup_distributed`` created it, the process group (ZeRO-3 runs
    could abort at exit without this). A group the caller created is left for the caller."""
    import torch.distributed as dist

    global _OWN_GROUP
    if engine is not None:
        try:
            engine.destroy()
        except Exception:  # best effort on the way out
            pass
    if dist.is_initialized():
        dist.barrier()
        if _OWN_GROUP:
            dist.destroy_process_group()
            forget_deepspeed_groups()
            _OWN_GROUP = False


def forget_deepspeed_groups() -> None:
    """Drop DeepSpeed's cached process groups once the process group they came from is destroyed.

    ``deepspeed.utils.groups`` keeps module-level handles to the groups of the first engine (a clone
    of the world group among them); the next process group made in this process (an in-process sweep
    point, the next test module) would otherwise meet the stale handles, and ``deepspeed.initialize``
    fails with "Group ... is not registered".
    """
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return  # DeepSpeed never made a group in this process
    import torch.distributed as dist

    for name, value in list(vars(groups).items()):
        if not name.startswith("_") or "GROUP" not in name:
            continue
        if isinstance(value, dict):
            value.clear()
        elif isinstance(value, (dist.ProcessGroup, list, tuple)) or value is None:
            setattr(groups, name, None)
    groups.mpu = None
