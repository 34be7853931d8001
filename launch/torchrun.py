"""torchrun command lines: standalone on one machine, or one node of a static multi-node job.

Rendezvous is ``--standalone`` (one machine) or static (``--master-addr/--master-port`` with a fixed
``--node-rank``): with those, ``--max-restarts`` restarts all workers cleanly after a failure, while
the c10d rendezvous backend repeatedly failed to reconnect gloo after a restart (platform notes).
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

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def command(self) -> list[str]:
        """The exact argv (torchrun as ``python -m torch.distributed.run``, so the venv's torch runs)."""
        cmd = [self.python, "-m", "torch.distributed.run"]
        if self.master_addr is None:
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
