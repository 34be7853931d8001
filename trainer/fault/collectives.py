"""Tiny collectives the fault-tolerance code needs, safe to call with or without a process group.

Every function here is collective when ``torch.distributed`` is initialised with more than one rank
(all ranks must call it at the same point) and a cheap local no-op otherwise, so the checkpointer
and the guards work unchanged in single-process runs and unit tests.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flag_device() -> torch.device:
    # NCCL reduces only CUDA tensors; gloo (CPU runs) only CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is True on at least one rank (collective)."""
    if not is_distributed():
        return bool(flag)
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_flag_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (collective). Only trusted peers send: pickling is fine here."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (collective)."""
    if is_distributed():
        dist.barrier()
