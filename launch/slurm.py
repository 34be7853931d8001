"""``mdeq launch slurm``: an sbatch script that runs the job on N nodes, and submits it when asked.

Two layouts, both with ``--requeue``, an early ``USR1`` before the time limit (forwarded to every
rank, which commits a checkpoint; then the script requeues the job and the requeued job resumes
from that checkpoint), and per-node logs next to the per-rank ones:

- ``--mode torchrun`` (default): one srun task per node running ``mdeq launch torchrun`` with the
  node rank and master taken from the SLURM environment, so every node runs the same preflight.
- ``--mode srun``: one srun task per process; each maps SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS
  to RANK / LOCAL_RANK / WORLD_SIZE (``launch.worker --from-slurm``).

A failed job step is restarted by requeueing the whole job (``--max-restarts`` times): srun's
``--kill-on-bad-exit`` ends the step on every node when one rank fails, so torchrun inside the job
never restarts workers itself, and the requeued job resumes from the last committed checkpoint.
"""

from __future__ import annotations

import argparse
import re
import shlex
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


CHECKPOINT_DIR_COMMENT = "# mdeq checkpoint dir: "
# trainer.fault.exit_codes.PREEMPTED_EXIT_CODE, repeated here: importing the trainer package loads torch,
# and writing a script should not take seconds (a test keeps the two equal)
PREEMPTED_EXIT_CODE = 75

# The batch script's signal handling. Bash runs a trap only between commands, hence `srun ... &` and
# `wait`; a trap ends with `exit` so the interrupted `wait` is not resumed.
_SCRIPT_FUNCTIONS = """\
srun_pid=
wait_for_step() {  # until srun has ended; its status
  local status=0
  [ -n "$srun_pid" ] || return 0
  while kill -0 "$srun_pid" 2>/dev/null; do wait "$srun_pid" || status=$?; done
  return "$status"
}

# SIGNAL_SECONDS s before the time limit SLURM sends USR1 to this script: pass it to every rank
# (each commits a checkpoint and exits), then requeue; the requeued job resumes from that checkpoint.
requeue_on_usr1() {
  echo "mdeq: time limit near: checkpointing, then requeueing job $SLURM_JOB_ID"
  [ -z "$srun_pid" ] || kill -USR1 "$srun_pid" 2>/dev/null || true
  wait_for_step || true
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
}
trap requeue_on_usr1 USR1

# SLURM ends the job (scancel, scontrol requeue, preemption, a node failure): the ranks got TERM
# too and commit a checkpoint. Wait for srun: SLURM kills what is left seconds after this shell exits.
finish_on_term() {
  echo "mdeq: job $SLURM_JOB_ID is being terminated: waiting for the ranks to commit and exit"
  [ -z "$srun_pid" ] || kill -TERM "$srun_pid" 2>/dev/null || true
  local status=0
  wait_for_step || status=$?
  exit "$status"
}
trap finish_on_term TERM
"""


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
    max_restarts: int = 3
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
            # no worker restarts inside the job: a failed step is restarted by requeueing the job
            args = [self.python, "--nproc-per-node", str(self.nproc_per_node), "--max-restarts", "0",
                    *self.worker_args()]
            return [f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 {shlex.quote(node_log)} \\",
                    f"  bash -c {shlex.quote(inner)} \\", f"  {shlex.join(args)} &"]
        args = [self.python, "-m", "launch.worker", "--from-slurm", *self.worker_args()]
        return [f"srun --ntasks-per-node={self.nproc_per_node} --kill-on-bad-exit=1 {shlex.quote(node_log)} \\",
                f"  {shlex.join(args)} &"]

    def render(self, header: str = "", checkpoint_dir: str | None = None) -> str:
        """The sbatch script text."""
        lines = ["#!/bin/bash"]
        if header:
            lines.append(f"# {header}")
        if checkpoint_dir:
            lines.append(f"{CHECKPOINT_DIR_COMMENT}{checkpoint_dir}")  # read back by --status
        lines += [f"#SBATCH {d}" for d in self.directives()]
        lines.append(f"# (SLURM opens --output before this script runs: {self.log_dir} must exist at submission)")
        lines += ["set -euo pipefail", f"cd {shlex.quote(self.workdir)}", f"mkdir -p {shlex.quote(self.log_dir)}/ranks",
                  ""]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in self.env.items()]
        if self.cpus_per_task:
            lines += ["# since Slurm 22.05 srun no longer takes --cpus-per-task from the allocation",
                      "export SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK"]
        lines += [
            'echo "mdeq: job $SLURM_JOB_ID on $SLURM_JOB_NODELIST, restart ${SLURM_RESTART_COUNT:-0}"',
            "",
            "# Rendezvous from the SLURM environment: the first node of the allocation hosts the store; the",
            "# port is derived from the job id so jobs sharing a node do not collide (and a requeue keeps it).",
            'mapfile -t job_hosts < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
            'MASTER_ADDR=${job_hosts[0]}',
            'MASTER_PORT=${MDEQ_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}',
            "export MASTER_ADDR MASTER_PORT",
            "",
            *_SCRIPT_FUNCTIONS.replace("SIGNAL_SECONDS", str(self.signal_seconds)).splitlines(),
            "",
            *self.srun_lines(),
            "srun_pid=$!",
            "status=0",
            'wait "$srun_pid" || status=$?',
            *self._ending_lines(),
        ]
        return "\n".join(lines) + "\n"


    def _ending_lines(self) -> list[str]:
        """After srun: done, requeued after a preemption (free), requeued after a failure (while the
        --max-restarts budget lasts), or failed."""
        budget = self.max_restarts
        return [
            '[ "$status" -ne 0 ] || exit 0',
            "# A node failure or preemption ends the step too, but then SLURM is ending (and requeueing) the",
            "# job itself and this script gets TERM shortly: neither requeue it again nor count a failure.",
            'job_state=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null | grep -o "JobState=[A-Z_]*" || true)',
            'if [ -n "$job_state" ] && [ "$job_state" != JobState=RUNNING ]; then',
            '  echo "mdeq: the job step ended (exit $status) while SLURM ends job $SLURM_JOB_ID ($job_state): '
            'not counted as a failure"',
            '  exit "$status"',
            "fi",
            f'if [ "$status" -eq {PREEMPTED_EXIT_CODE} ]; then',
            '  echo "mdeq: the ranks were preempted and committed a checkpoint: requeueing job $SLURM_JOB_ID"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "fi",
            "# A failed step: count it (preemptions and time-limit requeues do not count) and requeue while",
            "# the --max-restarts budget lasts; the requeued job resumes from the last committed checkpoint.",
            f"failures_file={shlex.quote(self.log_dir)}/{shlex.quote(self.job_name)}-$SLURM_JOB_ID.failures",
            'failures=$(( $(cat "$failures_file" 2>/dev/null || echo 0) + 1 ))',
            'echo "$failures" > "$failures_file"',
            f'if [ "$failures" -le {budget} ]; then',
            f'  echo "mdeq: the job step failed (exit $status): requeueing job $SLURM_JOB_ID, restart $failures of '
            f'--max-restarts {budget}"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "fi",
            f'echo "mdeq: the job step failed (exit $status) and --max-restarts {budget} restarts are used up: '
            'job $SLURM_JOB_ID fails (failures counted in $failures_file)"',
            'exit "$status"',
        ]


def register(forms: argparse._SubParsersAction, add_common) -> None:
    parser = forms.add_parser("slurm", help="write (and with --submit, sbatch) a SLURM batch script")
    parser.add_argument("--nodes", type=int, help="nodes (required unless --status)")
    parser.add_argument("--gpus-per-node", type=int, help="0 for CPU nodes (required unless --status)")
    parser.add_argument("--time", help="time limit, e.g. 04:00:00 or 1-00:00:00 (required unless --status)")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--account", default=None)
    parser.add_argument("--job-name", default="mdeq")
    parser.add_argument("--nproc-per-node", type=int, default=None,
                        help="processes per node (default: --gpus-per-node, or 1 on CPU nodes)")
    parser.add_argument("--cpus-per-task", type=int, default=None,
                        help="CPUs per srun task (passed to srun too, via SRUN_CPUS_PER_TASK)")
    parser.add_argument("--mode", choices=["torchrun", "srun"], default="torchrun",
                        help="torchrun: one task per node running torchrun; srun: one task per process")
    parser.add_argument("--signal-seconds", type=int, default=180,
                        help="send USR1 (checkpoint + requeue) this long before the time limit")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="requeue the job after a failed job step this many times (default 3; both modes); "
                             "preemptions and time-limit requeues do not count. The requeued job resumes from "
                             "the last committed checkpoint")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH option, e.g. --sbatch=--qos=high (repeatable)")
    parser.add_argument("--output", "-o", default=None, help="script path (default: <log-dir>/<job-name>.sbatch)")
    parser.add_argument("--submit", action="store_true", help="submit the script with sbatch")
    parser.add_argument("--status", metavar="JOB", default=None,
                        help="show a submitted job's state, restarts, logs and last committed step")
    add_common(parser)
    parser.set_defaults(func=run)


# Variables of the launching shell that would break a GPU job: they pin DeepSpeed to the CPU or
# override the GPUs SLURM assigns. Forwarded only when asked for with --env.
_CPU_ONLY_SETTINGS = {"DS_ACCELERATOR": lambda value: value.strip().lower() == "cpu",
                      "CUDA_VISIBLE_DEVICES": lambda value: True}


def job_environment(args: argparse.Namespace) -> dict[str, str]:
    """The forwarded variables, minus CPU-only settings of this shell when the job asks for GPUs (said on stderr)."""
    from launch.cli.launch import launch_env
    from launch.environment import parse_assignments

    env = launch_env(args)
    if args.gpus_per_node > 0:
        explicit = parse_assignments(args.env)
        for name, is_cpu_only in _CPU_ONLY_SETTINGS.items():
            if name in env and name not in explicit and is_cpu_only(env[name]):
                print(f"mdeq launch slurm: not forwarding {name}={env[name]} from this shell into a job with "
                      f"--gpus-per-node {args.gpus_per_node} (SLURM assigns the GPUs); pass --env "
                      f"{name}={env[name]} to force it", file=sys.stderr)
                del env[name]
    return env


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    from launch.cli.launch import worker_program

    missing = [f"--{name.replace('_', '-')}" for name in ("nodes", "gpus_per_node", "time")
               if getattr(args, name) is None]
    if missing:
        raise LaunchError(f"{', '.join(missing)} required (or --status JOB to look at a submitted job)")
    if args.nodes < 1 or args.gpus_per_node < 0:
        raise LaunchError("--nodes must be >= 1 and --gpus-per-node >= 0")
    if args.cpus_per_task is not None and args.cpus_per_task < 1:
        raise LaunchError("--cpus-per-task must be >= 1")
    if args.max_restarts < 0:
        raise LaunchError(f"--max-restarts must be >= 0 (requeues after a failed job step), got {args.max_restarts}")
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
                    env=job_environment(args), extra_sbatch=list(args.sbatch))


def run(args: argparse.Namespace) -> int:
    from launch.preflight import load_train_config
    from launch.slurm_status import print_status, submit

    if args.status is not None:
        return print_status(args.status)
    job = job_from_args(args)
    cfg = load_train_config(job.program_args)
    checkpoint_dir = str(Path(cfg.checkpoint.dir).resolve()) if cfg is not None and cfg.checkpoint.dir else None
    header = "written by: mdeq " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "written by mdeq launch slurm"
    text = job.render(header, checkpoint_dir)
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
    return submit(path, job)
