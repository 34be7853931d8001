"""``mdeq launch slurm``: an sbatch script that runs the job on N nodes, and submits it when asked.

Two layouts, both with ``--requeue``, an early ``USR1`` before the time limit (forwarded to every
rank, which commits a checkpoint; then the script requeues the job and the requeued job resumes
from that checkpoint), and per-node logs next to the per-rank ones:

- ``--mode torchrun`` (default): one srun task per node running ``mdeq launch torchrun`` with the
  node rank and master taken from the SLURM environment, so every node runs the same preflight and
  torchrun can restart its workers (``--max-restarts``).
- ``--mode srun``: one srun task per process; each maps SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS
  to RANK / LOCAL_RANK / WORLD_SIZE (``launch.worker --from-slurm``). No torchrun, no in-job restarts.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.errors import LaunchError

_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_limit_seconds(text: str) -> int:
    """SLURM's ``--time`` formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in seconds."""
    match = _TIME.match(text.strip())
    if not match:
        raise LaunchError(f"--time {text!r} is not a SLURM time: use MINUTES, HH:MM:SS or DAYS-HH:MM:SS")
    days, a, b, c = match.groups()
    a, b, c = int(a), int(b or 0), int(c or 0)
    if days is not None:  # D-H[:M[:S]]
        return int(days) * 86400 + a * 3600 + b * 60 + c
    if match.group(4) is not None:  # H:M:S
        return a * 3600 + b * 60 + c
    return a * 60 + b  # M or M:S


@dataclass
class SlurmJob:
    """Everything the script needs."""

    nodes: int
    gpus_per_node: int
    time: str
    program_args: list[str]
    nproc_per_node: int = 1
    partition: str | None = None
    account: str | None = None
    job_name: str = "mdeq"
    cpus_per_task: int | None = None
    mode: str = "torchrun"
    signal_seconds: int = 180
    max_restarts: int = 0
    log_dir: str = "runs/logs"
    script: str | None = None
    workdir: str = "."
    python: str = field(default_factory=lambda: sys.executable)
    env: dict[str, str] = field(default_factory=dict)
    extra_sbatch: list[str] = field(default_factory=list)

    def directives(self) -> list[str]:
        tasks_per_node = 1 if self.mode == "torchrun" else self.nproc_per_node
        lines = [f"--job-name={self.job_name}", f"--nodes={self.nodes}", f"--ntasks-per-node={tasks_per_node}"]
        if self.gpus_per_node > 0:
            lines.append(f"--gpus-per-node={self.gpus_per_node}")
        if self.cpus_per_task:
            lines.append(f"--cpus-per-task={self.cpus_per_task}")
        lines.append(f"--time={self.time}")
        if self.partition:
            lines.append(f"--partition={self.partition}")
        if self.account:
            lines.append(f"--account={self.account}")
        lines += ["--requeue", "--open-mode=append", f"--signal=B:USR1@{self.signal_seconds}",
                  f"--output={self.log_dir}/%x-%j.out", *self.extra_sbatch]
        return lines

    def worker_args(self) -> list[str]:
        out = ["--log-dir", f"{self.log_dir}/ranks"]
        if self.script:
            out += ["--script", self.script]
        return [*out, "--", *self.program_args]

    def srun_lines(self) -> list[str]:
        node_log = f"--output={self.log_dir}/%x-%j-node%n.log"
        if self.mode == "torchrun":
            # bash -c expands the per-node variables on each node; "$0"/"$@" carry our arguments unquoted.
            inner = ('exec "$0" -m launch.cli.main launch torchrun --nnodes "$SLURM_JOB_NUM_NODES" '
                     '--node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$@"')
            args = [self.python, "--nproc-per-node", str(self.nproc_per_node),
                    "--max-restarts", str(self.max_restarts), *self.worker_args()]
            return [f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {shlex.quote(node_log)} \\",
                    f"  bash -c {shlex.quote(inner)} \\", f"  {shlex.join(args)} &"]
        args = [self.python, "-m", "launch.worker", "--from-slurm", *self.worker_args()]
        return [f"srun --ntasks-per-node={self.nproc_per_node} --kill-on-bad-exit=1 {shlex.quote(node_log)} \\",
                f"  {shlex.join(args)} &"]

    def render(self, header: str = "") -> str:
        """The sbatch script text."""
        lines = ["#!/bin/bash"]
        if header:
            lines.append(f"# {header}")
        lines += [f"#SBATCH {d}" for d in self.directives()]
        lines.append(f"# (SLURM opens --output before this script runs: {self.log_dir} must exist at submission)")
        lines += ["set -euo pipefail", f"cd {shlex.quote(self.workdir)}", f"mkdir -p {shlex.quote(self.log_dir)}/ranks",
                  ""]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        lines += [
            "",
            "# Rendezvous from the SLURM environment: the first node of the allocation hosts the store; the",
            "# port is derived from the job id so jobs sharing a node do not collide (and a requeue keeps it).",
            'mapfile -t job_hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            'MASTER_ADDR=${job_hosts[0]}',
            'MASTER_PORT=${MDEQ_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}',
            "export MASTER_ADDR MASTER_PORT",
            "",
            f"# {self.signal_seconds} s before the time limit SLURM sends USR1 to this script: pass it to every rank",
            "# (each commits a checkpoint and exits), then requeue; the requeued job resumes from that checkpoint.",
            "requeue_on_usr1() {",
            '  echo "mdeq: time limit near: checkpointing, then requeueing job $SLURM_JOB_ID"',
            '  kill -USR1 "$srun_pid" 2>/dev/null || true',
            '  wait "$srun_pid" || true',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "}",
            "trap requeue_on_usr1 USR1",
            "",
            *self.srun_lines(),
            "srun_pid=$!",
            'wait "$srun_pid"',
        ]
        return "\n".join(lines) + "\n"


def register(forms: argparse._SubParsersAction, add_common) -> None:
    parser = forms.add_parser("slurm", help="write (and with --submit, sbatch) a SLURM batch script")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True, help="0 for CPU nodes")
    parser.add_argument("--time", required=True, help="time limit, e.g. 04:00:00 or 1-00:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default="mdeq")
    parser.add_argument("--nproc-per-node", type=int, default=None,
                        help="processes per node (default: --gpus-per-node, or 1 on CPU nodes)")
    parser.add_argument("--cpus-per-task", type=int, default=None)
    parser.add_argument("--mode", choices=["torchrun", "srun"], default="torchrun",
                        help="torchrun: one task per node running torchrun; srun: one task per process")
    parser.add_argument("--signal-seconds", type=int, default=180,
                        help="send USR1 (checkpoint + requeue) this long before the time limit")
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts inside the job")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    parser.add_argument("--output", "-o", default=None, help="script path (default: <log-dir>/<job-name>.sbatch)")
    parser.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    add_common(parser)
    parser.set_defaults(func=run)


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    from launch.cli.launch import launch_env, worker_program

    if args.nodes < 1 or args.gpus_per_node < 0:
        raise LaunchError("--nodes must be >= 1 and --gpus-per-node >= 0")
    limit = time_limit_seconds(args.time)
    if args.signal_seconds >= limit:
        raise LaunchError(f"--signal-seconds {args.signal_seconds} must be shorter than the time limit "
                          f"({limit} s), or the job is signalled at once")
    program = worker_program(args)
    nproc = args.nproc_per_node or (args.gpus_per_node if args.gpus_per_node > 0 else 1)
    return SlurmJob(nodes=args.nodes, gpus_per_node=args.gpus_per_node, time=args.time,
                    program_args=program.args, nproc_per_node=nproc, partition=args.partition,
                    account=args.account, job_name=args.job_name, cpus_per_task=args.cpus_per_task,
                    mode=args.mode, signal_seconds=args.signal_seconds, max_restarts=args.max_restarts,
                    log_dir=program.log_dir, script=program.script, workdir=str(Path.cwd()),
                    env=launch_env(args), extra_sbatch=list(args.sbatch))


def run(args: argparse.Namespace) -> int:
    from launch.preflight import load_train_config

    job = job_from_args(args)
    load_train_config(job.program_args)
    header = "written by: mdeq " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "written by mdeq launch slurm"
    text = job.render(header)
    if args.dry_run:
        print(text, end="")
        return 0
    path = Path(args.output or f"{job.log_dir}/{job.job_name}.sbatch")
    path.parent.mkdir(parents=True, exist_ok=True)
    Path(job.log_dir, "ranks").mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    if not args.submit:
        print(f"wrote {path}; submit it with: sbatch {path}")
        return 0
    try:
        done = subprocess.run(["sbatch", str(path)], capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise LaunchError(f"sbatch not found: run this on a SLURM login node, or submit {path} there") from None
    if done.returncode != 0:
        raise LaunchError(f"sbatch refused {path}: {done.stderr.strip() or done.stdout.strip()}")
    print(done.stdout.strip())
    return 0
