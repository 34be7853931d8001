"""``mdeq launch deepspeed``: the DeepSpeed launcher over a hostfile (pdsh/ssh, or ``--no-ssh`` per node).

What it needs that its defaults get wrong for us:
- On CPU it starts one process per host unless given ``--num_accelerators N``: we pass the hostfile's
  slots (the same on every host) when no CUDA GPU is visible.
- It forwards to remote hosts only variables starting with MLFLOW, PYTHON, MV2, UCX and the
  accelerator's prefixes, so GLOO_SOCKET_IFNAME and friends go into a ``.deepspeed_env`` file
  (``DS_ENV_FILE``) that it exports on every host.
- It appends ``--local_rank=N`` to the program unless told ``--no_local_rank``; our worker reads
  ``LOCAL_RANK`` from the environment.
- It never restarts failed ranks: restart the job (SLURM ``--requeue``, or run it again) and training
  resumes from the last committed checkpoint.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from launch.errors import LaunchError

_HOST_LINE = re.compile(r"^(\S+)\s+slots=(\d+)\s*$")


@dataclass
class Host:
    name: str
    slots: int


def read_hostfile(path: str | Path) -> list[Host]:
    """Hosts in DeepSpeed's format (``worker-0 slots=8`` per line, ``#`` comments)."""
    path = Path(path)
    if not path.is_file():
        raise LaunchError(f"hostfile {path} not found: write one line per host such as `worker-0 slots=8` "
                          "(slots = processes on that host) and pass it with --hostfile")
    hosts: list[Host] = []
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _HOST_LINE.match(line)
        if not match:
            raise LaunchError(f"{path}:{number}: expected `HOSTNAME slots=N`, got {raw.strip()!r}")
        if any(h.name == match.group(1) for h in hosts):
            raise LaunchError(f"{path}:{number}: host {match.group(1)} is listed twice")
        hosts.append(Host(match.group(1), int(match.group(2))))
    if not hosts:
        raise LaunchError(f"hostfile {path} lists no hosts: write one line per host such as `worker-0 slots=8`")
    if any(h.slots < 1 for h in hosts):
        raise LaunchError(f"{path}: every host needs slots >= 1")
    return hosts


def _is_local(address: str) -> bool:
    from launch.preflight import check_master_is_local

    try:
        check_master_is_local(address)
    except LaunchError:
        return False
    return True


def register(forms: argparse._SubParsersAction, add_common) -> None:
    parser = forms.add_parser("deepspeed", help="the DeepSpeed launcher over a hostfile (ssh, or --no-ssh per node)")
    parser.add_argument("--hostfile", required=True, help="`HOST slots=N` per line")
    parser.add_argument("--no-ssh", action="store_true", help="start only this node (run it on every host)")
    parser.add_argument("--node-rank", type=int, default=None, help="this host's index in the hostfile (with --no-ssh)")
    parser.add_argument("--master-addr", default=None, help="default: the first host of the hostfile")
    parser.add_argument("--master-port", type=int, default=29500)
    parser.add_argument("--master-timeout", type=float, default=5.0)
    add_common(parser)
    parser.set_defaults(func=run)


def build_command(args: argparse.Namespace, hosts: list[Host], program, gpus_visible: bool) -> list[str]:
    """The exact ``deepspeed`` argv (as ``python -m deepspeed.launcher.runner``)."""
    master_addr = args.master_addr or hosts[0].name
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(Path(args.hostfile).resolve()),
           "--master_addr", master_addr, "--master_port", str(args.master_port)]
    if args.no_ssh:
        cmd += ["--no_ssh", "--node_rank", str(args.node_rank)]
    if not gpus_visible:
        # one process per slot on CPU hosts (the launcher's CPU default is one per host)
        cmd += ["--num_accelerators", str(min(h.slots for h in hosts))]
    cmd += ["--no_local_rank", "--module", *program.module_args()]
    return cmd


def run(args: argparse.Namespace) -> int:
    import os

    from launch.cli.launch import exec_command, launch_env, worker_program
    from launch.environment import deepspeed_env_file_text
    from launch.preflight import NodePlan, load_train_config, machine_capacity, run_preflight
    from launch.torchrun import shell_lines

    hosts = read_hostfile(args.hostfile)
    if args.no_ssh and (args.node_rank is None or not 0 <= args.node_rank < len(hosts)):
        raise LaunchError(f"--no-ssh needs --node-rank in 0..{len(hosts) - 1} (this host's line in {args.hostfile})")
    if args.node_rank is not None and not args.no_ssh:
        raise LaunchError("--node-rank is only meaningful with --no-ssh (with ssh the launcher starts every host)")
    program = worker_program(args)
    env = launch_env(args)
    env_file = str(Path(args.log_dir).resolve() / ".deepspeed_env")
    capacity = machine_capacity()
    if capacity.gpus == 0 and len({h.slots for h in hosts}) > 1:
        raise LaunchError(f"{args.hostfile}: on CPU hosts the DeepSpeed launcher runs the same number of processes "
                          "on every host: give every host the same slots")
    command = build_command(args, hosts, program, gpus_visible=capacity.gpus > 0)
    launcher_env = {"DS_ENV_FILE": env_file, **env}
    world_size = sum(h.slots for h in hosts)
    if args.dry_run:
        load_train_config(program.args)
        print(f"# {env_file} (exported on every host by the launcher):")
        print("".join(f"#   {line}\n" for line in deepspeed_env_file_text(env).splitlines()), end="")
        print(shell_lines(command, launcher_env, f"{len(hosts)} host(s), {world_size} ranks"), end="")
        return 0
    master = args.master_addr or hosts[0].name
    # With ssh the launcher may run on a login node: treat this host as node 0 only if it is the master.
    this_rank = args.node_rank if args.no_ssh else (0 if _is_local(master) else 1)
    slots_here = hosts[args.node_rank if args.no_ssh else 0].slots
    plan = NodePlan(world_size=world_size, nproc_per_node=slots_here, node_rank=this_rank,
                    master_addr=master, master_port=args.master_port,
                    master_timeout=args.master_timeout)
    run_preflight(plan, program.args)
    os.makedirs(os.path.dirname(env_file), exist_ok=True)
    Path(env_file).write_text(deepspeed_env_file_text(env))
    return exec_command(command, launcher_env)
