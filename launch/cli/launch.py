"""``mdeq launch FORM``: the same training command on a laptop, a static set of nodes, the DeepSpeed
launcher, SLURM or Kubernetes.

Every form takes the ``mdeq`` arguments to run after ``--`` (``-- train --config x.yaml``), checks
the job before spawning anything (``launch.preflight``), forwards the tracking and network
variables (``launch.environment``), gives every rank its own log file (``launch.worker``), and with
``--dry-run`` prints the exact commands or script instead of running them.
"""

from __future__ import annotations

import argparse
import os
import sys

from launch.errors import LaunchError

DEFAULT_PORT = 29500


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("launch", help="start training on this machine, several nodes, SLURM or Kubernetes",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    forms = parser.add_subparsers(dest="form", metavar="FORM")
    forms.required = True

    local = forms.add_parser("local", help="torchrun on this machine (standalone rendezvous, restarts on)")
    local.add_argument("--nproc", type=int, default=1, help="processes: one per GPU, or CPU processes")
    local.add_argument("--max-restarts", type=int, default=3, help="restart all workers this often after a failure")
    _add_common(local)
    local.set_defaults(func=_run_local)

    node = forms.add_parser("torchrun", help="one node of a static multi-node job (run it on every node)")
    node.add_argument("--nnodes", type=int, required=True)
    node.add_argument("--node-rank", type=int, required=True, help="0 on the master host, 1..N-1 elsewhere")
    node.add_argument("--master-addr", required=True, help="node 0's address, reachable from every node")
    node.add_argument("--master-port", type=int, default=DEFAULT_PORT)
    node.add_argument("--nproc-per-node", type=int, default=1)
    node.add_argument("--max-restarts", type=int, default=0,
                      help="restart this node's workers after a failure (every node must use the same value)")
    node.add_argument("--master-timeout", type=float, default=5.0, help="seconds to wait when probing the master")
    _add_common(node)
    node.set_defaults(func=_run_torchrun)

    from launch import deepspeed_launcher, k8s, slurm

    deepspeed_launcher.register(forms, _add_common)
    slurm.register(forms, _add_common)
    k8s.register(forms, _add_common)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print the exact commands or script; start nothing")
    parser.add_argument("--log-dir", default="runs/logs", help="per-rank log files rank-<R>.log go here")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for every rank (repeatable); MLFLOW_*, GLOO_*, NCCL_* ... "
                             "of this shell are forwarded anyway")
    parser.add_argument("--script", default=None,
                        help="run this Python file on every rank instead of the mdeq command")
    parser.add_argument("program", nargs=argparse.REMAINDER,
                        help="after --: the mdeq command every rank runs, e.g. -- train --config x.yaml")


def program_args(args: argparse.Namespace) -> list[str]:
    """The arguments after ``--`` (argparse keeps the separator in REMAINDER)."""
    program = list(args.program)
    if program and program[0] == "--":
        program = program[1:]
    if not program and not args.script:
        raise LaunchError("nothing to run: give the mdeq command after --, e.g. "
                          "`mdeq launch local --nproc 2 -- train --config configs/quickstart.yaml`")
    return program


def worker_program(args: argparse.Namespace):
    from launch.torchrun import WorkerProgram

    script = os.path.abspath(args.script) if args.script else None
    if script and not os.path.isfile(script):
        raise LaunchError(f"--script {args.script} does not exist")
    return WorkerProgram(args=program_args(args), script=script, log_dir=os.path.abspath(args.log_dir))


def launch_env(args: argparse.Namespace) -> dict[str, str]:
    from launch.environment import launch_environment, parse_assignments

    return launch_environment(parse_assignments(args.env))


def exec_command(command: list[str], env: dict[str, str]) -> int:
    """Replace this process with the launcher, so SLURM's and the user's signals reach it directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(command[0], command, {**os.environ, **env})
    return 0  # not reached


def _run_local(args: argparse.Namespace) -> int:
    from launch.preflight import NodePlan, load_train_config, run_preflight
    from launch.torchrun import TorchrunNode, shell_lines

    node = TorchrunNode(nproc_per_node=args.nproc, program=worker_program(args), max_restarts=args.max_restarts)
    env = launch_env(args)
    if args.dry_run:
        load_train_config(node.program.args)
        print(shell_lines(node.command(), env, f"{args.nproc} process(es) on this machine"), end="")
        return 0
    run_preflight(NodePlan(world_size=node.world_size, nproc_per_node=args.nproc), node.program.args)
    return exec_command(node.command(), env)


def _run_torchrun(args: argparse.Namespace) -> int:
    from launch.preflight import NodePlan, load_train_config, run_preflight
    from launch.torchrun import TorchrunNode, shell_lines

    if not 0 <= args.node_rank < args.nnodes:
        raise LaunchError(f"--node-rank must be in 0..{args.nnodes - 1} for --nnodes {args.nnodes}, got {args.node_rank}")
    node = TorchrunNode(nproc_per_node=args.nproc_per_node, program=worker_program(args), nnodes=args.nnodes,
                        node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port,
                        max_restarts=args.max_restarts)
    env = launch_env(args)
    if args.dry_run:
        load_train_config(node.program.args)
        comment = (f"node {args.node_rank} of {args.nnodes} ({node.world_size} ranks in all); run the same "
                   "line on every node with its own --node-rank")
        print(shell_lines(node.command(), env, comment), end="")
        return 0
    plan = NodePlan(world_size=node.world_size, nproc_per_node=args.nproc_per_node, node_rank=args.node_rank,
                    master_addr=args.master_addr, master_port=args.master_port, master_timeout=args.master_timeout)
    run_preflight(plan, node.program.args)
    return exec_command(node.command(), env)
