"""Process-group start-up that survives ``torchrun --max-restarts``.

torchrun's agent keeps one TCPStore for the whole job and (torch 2.14) no longer namespaces it per
restart. The restarted ranks then read the dead generation's gloo/NCCL addresses from it and fail
in ``connectFullMesh`` ("Connection refused") - seen here with ``--standalone`` and with a static
``--master-addr/--master-port``. Initialising the default group on a ``PrefixStore`` named after
``TORCHELASTIC_RESTART_COUNT`` gives every generation its own keys.

That count cannot name the generations of an elastic job (``--nnodes MIN:MAX``): a membership change
restarts the workers without counting a restart, and a node that joins later counts from 0. The
elastic launch form therefore asks torchrun for a fresh worker store per rendezvous round
(``launch/torchrun.py``); the workers then run without the agent store and this helper does nothing.
"""

from __future__ import annotations

import os

import torch.distributed as dist


def init_process_group_for_restarts(backend: str) -> bool:
    """Under torchrun, create the default process group on a per-restart store namespace.

    Returns True when it did; False (nothing done) outside torchrun's agent store or when a group
    exists already. Call before ``deepspeed.init_distributed``, which then reuses the group.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return False
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"/mdeq/restart_{attempt}", store), rank=rank,
                            world_size=world_size)
    return True


def hold_after_commit_for_test(world_size: int, requested_locally) -> None:
    """Test switch ``MDEQ_TEST_HOLD_WORLD=W``: a generation of W processes, once it has committed a
    checkpoint, trains no further until it is asked to stop (the agent's SIGTERM when a node joins).

    The elastic test uses it so the smaller world cannot reach ``max_steps`` before the returning node
    has joined, however fast the machine is. ``requested_locally`` is the preemption handler's flag;
    one process per world is enough here (the test holds a world of 1), so no collective is needed.
    """
    if os.environ.get("MDEQ_TEST_HOLD_WORLD") != str(world_size):
        return
    import time

    print(f"MDEQ_TEST_HOLD_WORLD={world_size}: holding after the commit until asked to stop", flush=True)
    while not requested_locally():
        time.sleep(0.05)  # polling a signal flag set by the handler; nothing else to wait on
