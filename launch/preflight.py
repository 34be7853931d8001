"""Checks run before any process is spawned, each ending in one ``LaunchError`` that says what to do.

A launch that would fail minutes later on a remote node (a config typo, too few shards for every
reader, an unwritable checkpoint dir, a busy port, a master nobody can reach, more processes than
the machine has cores or GPUs) fails here in a second instead, with exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.errors import LaunchError


@dataclass
class TrainArgs:
    """The parts of the ``mdeq train`` arguments the launcher needs to read the config."""

    config: str | None
    overrides: list[str]


def read_train_args(program: Sequence[str]) -> TrainArgs:
    """Pick ``--config`` and ``--set`` out of the arguments after ``--`` (``train --config x --set a=b``)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", "-c", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    known, _ = parser.parse_known_args(list(program))
    return TrainArgs(known.config, list(known.overrides))


def load_train_config(program: Sequence[str]) -> Any | None:
    """The validated config the training command will load (None when it names no ``--config``).

    Raises ``ConfigError`` (a user error: exit 2) naming the bad key."""
    train = read_train_args(program)
    if train.config is None and not train.overrides:
        return None
    from trainer.config import load_config

    return load_config(train.config, train.overrides)


def check_shards(cfg: Any, world_size: int) -> int:
    """The shards exist and can feed ``world_size`` processes (canonical streams, whole micro-batches);
    returns the shard count."""
    spec = cfg.data.train_shards
    if not spec:
        return 0  # the training command supplies its own data (e.g. synthetic); nothing to list here
    from data_pipelines import check_readers
    from trainer.build import batching

    plan = batching(cfg, world_size)
    shard_set = check_readers(spec, world_size, cfg.data.workers, batch_size=cfg.data.batch_size,
                              global_batch=plan.global_batch, streams=cfg.data.streams)
    return len(shard_set.shards)


def check_writable_dir(path: str | Path, what: str = "checkpoint dir") -> Path:
    """Create ``path`` if needed and prove a file can be written there."""
    path = Path(path)
    probe = path / f".mdeq-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise LaunchError(f"{what} {path} is not writable ({err.strerror}): choose another with "
                          f"--set checkpoint.dir=DIR or fix its permissions") from None
    return path


def check_port_free(port: int, host: str = "") -> None:
    """The rendezvous port can be bound on this host (node 0 runs the store there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same options as the store's listener: a port left in TIME_WAIT by a previous run is fine.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise LaunchError(f"master port {port} is already in use on this host (another job or an "
                                  f"old run still holds it): pick a free one with --master-port, or find "
                                  f"the holder with `ss -ltnp 'sport = :{port}'`") from None
            if err.errno == errno.EACCES:
                raise LaunchError(f"master port {port} needs privileges to bind: use a port above 1024 "
                                  "with --master-port") from None
            raise


def check_master_is_local(master_addr: str) -> None:
    """On node 0 the master address must be one of this host's own (its store listens here)."""
    try:
        infos = socket.getaddrinfo(master_addr, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise LaunchError(f"master address {master_addr!r} does not resolve ({err.strerror}): give node 0's "
                          "IP address or a resolvable host name with --master-addr") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((infos[0][4][0], 0))
        except OSError:
            raise LaunchError(f"--node-rank 0 runs the rendezvous store, but --master-addr {master_addr} is not "
                              "an address of this host: run node 0 on the master host, or give its own "
                              "address (see `ip -4 addr`)") from None


def check_master_reachable(master_addr: str, master_port: int, timeout: float = 5.0) -> None:
    """Nodes other than 0 must reach the master host. "Connection refused" counts as reachable: the host
    answered, node 0 has just not opened its store yet."""
    try:
        infos = socket.getaddrinfo(master_addr, master_port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise LaunchError(f"master address {master_addr!r} does not resolve ({err.strerror}): give node 0's "
                          "IP address or a resolvable host name with --master-addr") from None
    address = infos[0][4]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(address)
            return
        except ConnectionRefusedError:
            return
        except TimeoutError:
            why = f"no answer within {timeout:g} s"
        except OSError as err:
            why = err.strerror or str(err)
    raise LaunchError(f"master {master_addr}:{master_port} is unreachable from this host ({why}): check "
                      "--master-addr, that this host has a route to it, firewalls, and the interface "
                      "named by GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME")


@dataclass
class MachineCapacity:
    """How many worker processes this machine can host: one per GPU, else one per CPU core."""

    gpus: int
    cpu_cores: int

    @property
    def max_processes(self) -> int:
        return self.gpus if self.gpus > 0 else self.cpu_cores

    def describe(self) -> str:
        if self.gpus > 0:
            return f"{self.gpus} CUDA GPU(s) visible (one process per GPU)"
        return f"{self.cpu_cores} CPU core(s) available and no CUDA GPU (one process per core at most)"


def machine_capacity() -> MachineCapacity:
    """GPUs (when CUDA is present) and the CPU cores this process may run on."""
    gpus = 0
    # Importing torch costs seconds on every node: ask it only where an NVIDIA device node exists.
    # DS_ACCELERATOR=cpu makes DeepSpeed ignore GPUs: count cores then.
    if os.environ.get("DS_ACCELERATOR") != "cpu" and any(Path("/dev").glob("nvidia[0-9]*")):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return MachineCapacity(gpus=gpus, cpu_cores=cores)


def check_nproc(nproc: int, capacity: MachineCapacity | None = None, flag: str = "--nproc") -> None:
    """Refuse more processes per node than the machine has GPUs (or CPU cores without CUDA)."""
    if nproc < 1:
        raise LaunchError(f"{flag} must be at least 1, got {nproc}")
    capacity = capacity or machine_capacity()
    if nproc > capacity.max_processes:
        raise LaunchError(f"{flag} {nproc} is more than this machine supports: {capacity.describe()}; "
                          f"use {flag} {capacity.max_processes} or fewer")


@dataclass
class NodePlan:
    """What one node of a job will run, for the checks."""

    world_size: int
    nproc_per_node: int
    node_rank: int = 0
    master_addr: str | None = None  # None: a standalone (single-node) rendezvous on a free port
    master_port: int | None = None
    master_timeout: float = 5.0


def run_preflight(plan: NodePlan, program: Sequence[str], *, check_data: bool = True) -> Any | None:
    """Every check for one node, in the order a user would want to hear about problems."""
    cfg = load_train_config(program)
    check_nproc(plan.nproc_per_node)
    if plan.master_addr is not None and plan.master_port is not None:
        if plan.node_rank == 0:
            check_master_is_local(plan.master_addr)
            check_port_free(plan.master_port)
        else:
            check_master_reachable(plan.master_addr, plan.master_port, plan.master_timeout)
    if cfg is not None:
        if check_data:
            check_shards(cfg, plan.world_size)
        check_writable_dir(cfg.checkpoint.dir)
    return cfg
