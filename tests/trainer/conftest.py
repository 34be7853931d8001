"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import os
import socket

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches a clone of the world group: one from an earlier module's (destroyed) process
    group would make ``deepspeed.initialize`` fail with "Group ... is not registered"."""
    from deepspeed.utils import groups

    groups._WORLD_GROUP = None


@pytest.fixture(scope="module")
def one_rank_process_group():
    """A one-rank gloo group for in-process DeepSpeed engines (no MPI discovery, no torchrun).

    Torn down with the module, launcher variables included: later tests check that their errors
    come before any process group exists, and a stale RANK/MASTER_PORT changes how they set one up.
    """
    import torch.distributed as dist

    layout = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
              "MASTER_PORT": str(free_port())}
    saved = {key: os.environ.get(key) for key in layout}
    for key, value in layout.items():
        os.environ.setdefault(key, value)
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", rank=0, world_size=1)
        _forget_deepspeed_groups()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()
        _forget_deepspeed_groups()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
