"""Which environment variables travel with a launch, and how each launcher is told about them.

torchrun and srun children inherit the launching shell's environment, but the DeepSpeed launcher
forwards to remote hosts only variables whose names start with a few prefixes (MLFLOW, PYTHON, MV2,
UCX and the accelerator's own), and Kubernetes pods inherit nothing. So every launch form asks this
module for one explicit mapping and writes it where its launcher reads it: the process environment,
a ``.deepspeed_env`` file, ``export`` lines of an sbatch script, or ``env:`` of a manifest.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from launch.errors import LaunchError

# Variables (or prefixes ending in "_") that configure tracking, the network interfaces gloo/NCCL
# bind to, threading and the project itself. Everything else stays behind on purpose: a laptop's
# PATH or HOME is wrong on a cluster node.
PROPAGATED_PREFIXES: tuple[str, ...] = (
    "MLFLOW_",            # tracking URI, experiment, credentials
    "MDEQ_",              # this project's switches
    "GLOO_",              # GLOO_SOCKET_IFNAME: which interface gloo binds to (CPU runs)
    "NCCL_",              # NCCL_SOCKET_IFNAME, NCCL_IB_*, NCCL_DEBUG
    "TP_SOCKET_IFNAME",   # tensorpipe (RPC)
    "TORCH_NCCL_",        # async error handling, timeouts
    "TORCH_DISTRIBUTED_DEBUG",
    "TORCH_EXTENSIONS_DIR",  # DeepSpeed's JIT ops cache: compile once, reuse on every node
    "DS_ACCELERATOR",     # force DeepSpeed's CPU accelerator
    "OMP_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
    "HF_", "WDS_",        # caches and webdataset options
)


def is_propagated(name: str) -> bool:
    """True when ``name`` is one of the variables every launch form forwards."""
    return any(name == p or (p.endswith("_") and name.startswith(p)) for p in PROPAGATED_PREFIXES)


def parse_assignments(assignments: Sequence[str]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}`` (the values of repeated ``--env``)."""
    out: dict[str, str] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep or not name or not name.replace("_", "").isalnum() or name[0].isdigit():
            raise LaunchError(f"--env expects NAME=VALUE with a shell variable name, got {item!r}")
        out[name] = value
    return out


def launch_environment(extra: Mapping[str, str] | None = None,
                       source: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a launch forwards: the propagated ones from ``source`` (default: this process),
    then ``extra`` (from ``--env``) on top, then what every worker needs regardless."""
    source = os.environ if source is None else source
    env = {k: v for k, v in sorted(source.items()) if is_propagated(k)}
    env.update(extra or {})
    # Worker output goes through a pipe into the per-rank log: unbuffered keeps lines in order and
    # loses nothing when a rank is killed.
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def deepspeed_env_file_text(env: Mapping[str, str]) -> str:
    """The ``.deepspeed_env`` format: one ``NAME=VALUE`` per line, read by the DeepSpeed launcher and
    exported on every host it starts (it does not quote, so values must be single-line)."""
    lines = []
    for name, value in env.items():
        if "\n" in value:
            raise LaunchError(f"environment variable {name} holds a newline; the DeepSpeed launcher cannot "
                              "forward it (set it in the remote shell profile instead)")
        lines.append(f"{name}={value}")
    return "\n".join(lines) + ("\n" if lines else "")
