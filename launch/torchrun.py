"""torchrun command lines: standalone on one machine, one node of a static multi-node job, or one
node of an elastic job.

Rendezvous is ``--standalone`` (one machine), static (``--master-addr/--master-port`` with a fixed
``--node-rank``) or elastic (``--nnodes MIN:MAX`` with the c10d backend at ``--rdzv-endpoint``).
In every form ``--max-restarts`` restarts all workers after a failure. In the elastic form a lost
node makes the survivors' workers fail; their agents meet again without it (once its heartbeat is
missed) and restart the workers on the smaller world; a node that starts later waits at the
rendezvous and the running agents restart their workers to let it in. Each rendezvous round gets
its own worker store (``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``): the agent-shared store outlives
rounds, and the per-restart namespace of ``trainer/fault/restarts.py`` cannot tell rounds apart
there, because a membership change restarts workers without counting a restart and a node that
joins late counts its restarts from 0.
Each worker runs ``python -m launch.worker``, which writes its per-rank log and then runs the
``mdeq`` command given after ``--`` (normally ``train ...``) or a ``--script``.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass
class WorkerProgram:
    """What every rank runs: ``mdeq <args>`` or a Python script, logging to ``log_dir/rank-<R>.log``."""

    args: list[str]
    script: str | None = None
    log_dir: str | None = None

    def module_args(self) -> list[str]:
        """Arguments after ``python -m``: ``launch.worker [--log-dir D] [--script S] -- args``."""
        out = ["launch.worker"]
        if self.log_dir:
            out += ["--log-dir", self.log_dir]
        if self.script:
            out += ["--script", self.script]
        return [*out, "--", *self.args]


@dataclass
class ElasticRendezvous:
    """An elastic job: between ``min_nodes`` and ``max_nodes`` nodes meet at a c10d store."""

    min_nodes: int
    max_nodes: int
    endpoint: str  # HOST:PORT of the c10d store; the node whose address it is hosts the store
    is_host: bool  # this node hosts the store
    run_id: str = "mdeq"
    local_addr: str | None = None  # this node's address as the others reach it (default: its host name)
    # seconds the rendezvous waits for more nodes once min_nodes are there, and at most for min_nodes
    last_call_timeout: int = 5
    join_timeout: int = 600

    def arguments(self) -> list[str]:
        conf = (f"is_host={str(self.is_host).lower()},last_call_timeout={self.last_call_timeout},"
                f"join_timeout={self.join_timeout}")
        out = ["--nnodes", f"{self.min_nodes}:{self.max_nodes}", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", self.endpoint, "--rdzv-id", self.run_id, "--rdzv-conf", conf]
        if self.local_addr:
            out += ["--local-addr", self.local_addr]
        return out


@dataclass
class TorchrunNode:
    """One node's torchrun invocation."""

    nproc_per_node: int
    program: WorkerProgram
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None  # None: --standalone
    master_port: int = 29500
    max_restarts: int = 0
    monitor_interval: float = 1.0
    # seconds workers get to checkpoint after SIGTERM/SIGUSR1 before torchrun kills them
    shutdown_timeout: int = 60
    python: str = field(default_factory=lambda: sys.executable)
    elastic: ElasticRendezvous | None = None  # set: --nnodes MIN:MAX over c10d (nnodes/node_rank unused)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def environment(self) -> dict[str, str]:
        """Variables torchrun itself needs for this form."""
        # one worker store per rendezvous round (see the module docstring)
        return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"} if self.elastic else {}

    def command(self) -> list[str]:
        """The exact argv (torchrun as ``python -m torch.distributed.run``, so the venv's torch runs)."""
        cmd = [self.python, "-m", "torch.distributed.run"]
        if self.elastic is not None:
            cmd += self.elastic.arguments()
        elif self.master_addr is None:
            cmd += ["--standalone", "--nnodes", "1"]
        else:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank),
                    "--master-addr", self.master_addr, "--master-port", str(self.master_port)]
        cmd += ["--nproc-per-node", str(self.nproc_per_node),
                "--max-restarts", str(self.max_restarts),
                "--monitor-interval", f"{self.monitor_interval:g}",
                # SIGUSR1 is SLURM's early warning before the time limit: forward it so ranks checkpoint
                "--signals-to-handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
                "--shutdown-timeout", str(self.shutdown_timeout),
                "-m", *self.program.module_args()]
        return cmd


def shell_lines(command: Sequence[str], env: Mapping[str, str], comment: str | None = None) -> str:
    """A copy-pasteable rendering: ``export`` lines, then the command (the ``--dry-run`` output)."""
    lines = [f"# {comment}"] if comment else []
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    lines.append(shlex.join(command))
    return "\n".join(lines) + "\n"
