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

    node = forms.add_parser("torchrun", help="one node of a static or elastic multi-node job (run it on every node)")
    node.add_argument("--nnodes", required=True,
                      help="N (static: with --node-rank and --master-addr) or MIN:MAX (elastic: with --rdzv-endpoint)")
    node.add_argument("--node-rank", type=int, default=None, help="static: 0 on the master host, 1..N-1 elsewhere")
    node.add_argument("--master-addr", default=None, help="static: node 0's address, reachable from every node")
    node.add_argument("--master-port", type=int, default=DEFAULT_PORT)
    node.add_argument("--rdzv-endpoint", default=None, metavar="HOST:PORT",
                      help="elastic: the c10d rendezvous store; the node with this address keeps it")
    node.add_argument("--rdzv-id", default="mdeq", help="elastic: job id, the same on every node")
    node.add_argument("--local-addr", default=None,
                      help="elastic: this node's address as the other nodes reach it (default: its host name)")
    node.add_argument("--nproc-per-node", type=int, default=1)
    node.add_argument("--max-restarts", type=int, default=None,
                      help="restart this node's workers after a failure (every node must use the same value; "
                           "default 0, elastic 3: each lost node costs the survivors one)")
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
    from launch.elastic import parse_nnodes

    low, high = parse_nnodes(args.nnodes)
    if args.rdzv_endpoint is not None or low != high:
        return _run_elastic(args, low, high)
    from launch.preflight import NodePlan, load_train_config, run_preflight
    from launch.torchrun import TorchrunNode, shell_lines

    if args.node_rank is None or args.master_addr is None:
        raise LaunchError("a static job needs --node-rank and --master-addr on every node (or use the elastic form: "
                          "--nnodes MIN:MAX --rdzv-endpoint HOST:PORT)")
    if not 0 <= args.node_rank < low:
        raise LaunchError(f"--node-rank must be in 0..{low - 1} for --nnodes {low}, got {args.node_rank}")
    node = TorchrunNode(nproc_per_node=args.nproc_per_node, program=worker_program(args), nnodes=low,
                        node_rank=args.node_rank, master_addr=args.master_addr, master_port=args.master_port,
                        max_restarts=args.max_restarts or 0)
    env = launch_env(args)
    if args.dry_run:
        load_train_config(node.program.args)
        comment = (f"node {args.node_rank} of {low} ({node.world_size} ranks in all); run the same "
                   "line on every node with its own --node-rank")
        print(shell_lines(node.command(), env, comment), end="")
        return 0
    plan = NodePlan(world_size=node.world_size, nproc_per_node=args.nproc_per_node, node_rank=args.node_rank,
                    master_addr=args.master_addr, master_port=args.master_port, master_timeout=args.master_timeout)
    run_preflight(plan, node.program.args)
    return exec_command(node.command(), env)


def _run_elastic(args: argparse.Namespace, low: int, high: int) -> int:
    from launch.elastic import check_world_sizes, is_local_address, parse_endpoint
    from launch.preflight import (
        check_master_reachable,
        check_nproc,
        check_port_free,
        check_writable_dir,
        load_train_config,
    )
    from launch.torchrun import ElasticRendezvous, TorchrunNode, shell_lines

    if args.rdzv_endpoint is None:
        raise LaunchError(f"--nnodes {args.nnodes} is elastic: give the rendezvous store with --rdzv-endpoint HOST:PORT "
                          "(the same on every node; that host keeps the store)")
    if args.node_rank is not None or args.master_addr is not None:
        raise LaunchError("--node-rank and --master-addr belong to the static form; an elastic job (--rdzv-endpoint) "
                          "assigns ranks at every rendezvous")
    host, port = parse_endpoint(args.rdzv_endpoint)
    hosting = is_local_address(host)
    rendezvous = ElasticRendezvous(min_nodes=low, max_nodes=high, endpoint=f"{host}:{port}", is_host=hosting,
                                   run_id=args.rdzv_id, local_addr=args.local_addr)
    max_restarts = 3 if args.max_restarts is None else args.max_restarts
    node = TorchrunNode(nproc_per_node=args.nproc_per_node, program=worker_program(args), max_restarts=max_restarts,
                        elastic=rendezvous)
    env = {**launch_env(args), **node.environment()}
    cfg = load_train_config(node.program.args)
    sizes = [n * args.nproc_per_node for n in range(low, high + 1)]
    if args.dry_run:
        print(shell_lines(node.command(), env, f"one node of an elastic job of {low} to {high} nodes "
                                               f"({sizes[0]} to {sizes[-1]} ranks); the same line on every node"),
              end="")
        return 0
    check_nproc(args.nproc_per_node, flag="--nproc-per-node")
    if hosting:
        check_port_free(port)
    else:
        check_master_reachable(host, port, args.master_timeout)
    if cfg is not None:
        check_world_sizes(cfg, sizes)
        check_writable_dir(cfg.checkpoint.dir)
    return exec_command(node.command(), env)
