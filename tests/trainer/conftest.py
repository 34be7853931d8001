"""Fixtures shared by the trainer tests."""

from __future__ import annotations

import os

import pytest

from trainer.distributed import forget_deepspeed_groups, free_port


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
        forget_deepspeed_groups()
    yield
    if created and dist.is_initialized():
        dist.destroy_process_group()
        forget_deepspeed_groups()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
