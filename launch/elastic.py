"""Checks and set-up for the elastic form ``mdeq launch torchrun --nnodes MIN:MAX --rdzv-endpoint H:P``.

The job may run on any number of nodes from MIN to MAX, and changes size while it runs. So every
process count it may see must be able to keep the run's global batch in whole micro-batches and
share the canonical streams of the data order; a layout that would fail after a node was lost is
refused here, before anything starts.
"""

from __future__ import annotations

import math
import socket
from typing import Any

from launch.errors import LaunchError


def parse_nnodes(text: str) -> tuple[int, int]:
    """'2' -> (2, 2); '1:4' -> (1, 4); anything else is a LaunchError."""
    parts = str(text).split(":")
    try:
        low, high = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (0, -1)
    except ValueError:
        low, high = 0, -1
    if not 1 <= low <= high:
        raise LaunchError(f"--nnodes must be N or MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return low, high


def parse_endpoint(text: str) -> tuple[str, int]:
    host, _, port = str(text).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise LaunchError(f"--rdzv-endpoint must be HOST:PORT (the host that keeps the rendezvous store), "
                          f"got {text!r}")
    return host, int(port)


def is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this machine (it can be bound here)."""
    try:
        address = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as err:
        raise LaunchError(f"rendezvous host {host!r} does not resolve ({err.strerror}): give its IP address "
                          "in --rdzv-endpoint") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError:
            return False
    return True


def check_world_sizes(cfg: Any, sizes: list[int]) -> None:
    """Every process count in ``sizes`` can train ``cfg`` from a checkpoint of every other one."""
    from data_pipelines import DataError, check_readers
    from trainer.build import batching
    from trainer.errors import TrainerError

    # the global batch the run keeps: the configured one, else the one of the size it starts on
    starts = {cfg.train.global_batch_size} if cfg.train.global_batch_size else {batching(cfg, n).global_batch
                                                                                 for n in sizes}
    held = cfg.train.hold_on_resize == "global_batch"
    lcm = math.lcm(*sizes)
    for global_batch in sorted(starts):
        for size in sizes:
            try:
                plan = batching(cfg, size, run_global_batch=global_batch if held else None)
                if cfg.data.train_shards:
                    check_readers(cfg.data.train_shards, size, cfg.data.workers, batch_size=cfg.data.batch_size,
                                  global_batch=plan.global_batch, streams=cfg.data.streams)
            except (TrainerError, DataError) as err:
                raise LaunchError(
                    f"this elastic job may run on {', '.join(map(str, sizes))} processes, but on {size}: {err}. Set "
                    f"train.global_batch_size to a multiple of {lcm * cfg.data.batch_size} (every process count "
                    f"times data.batch_size) and data.streams to a multiple of {lcm} dividing it, or narrow "
                    "--nnodes") from None
