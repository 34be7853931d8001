"""What every launched process runs: copy its output into a per-rank log file, then run the program.

``python -m launch.worker [--log-dir DIR] -- train --config x.yaml`` runs ``mdeq train --config
x.yaml``; ``python -m launch.worker --script path.py -- args`` runs a Python file instead (smoke tests,
custom entry points). The rank comes from the launcher's environment (``RANK``, else
``SLURM_PROCID``), so the log is ``DIR/rank-<RANK>.log`` whichever launcher started us. Output still
reaches the console (torchrun, srun or the DeepSpeed launcher prefix and collect it there).

The copy is done inside the process (the file descriptors 1 and 2 point at a pipe a thread drains)
rather than by a parent wrapper, so the launcher's signals reach the training process directly.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import runpy
import struct
import sys
import termios
import threading
import time
import traceback
from pathlib import Path


def _bytes_waiting(fd: int) -> int:
    """Bytes readable from a pipe right now."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def rank_from_environment(environ: dict[str, str] | os._Environ = os.environ) -> int:
    """This process's global rank as the launcher set it (0 when run alone)."""
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if environ.get(name, "").isdigit():
            return int(environ[name])
    return 0


class RankLogTee:
    """Duplicate everything written to fd 1 and 2 (also by C code and forked children) into a file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in stop()
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        # a requeued SLURM job is another attempt too: say which one
        slurm = f" SLURM_RESTART_COUNT={os.environ['SLURM_RESTART_COUNT']}" if "SLURM_RESTART_COUNT" in os.environ else ""
        header = f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} pid {os.getpid()} attempt {attempt}{slurm} ===\n"
        self.file.write(header.encode())
        sys.stdout.flush()
        sys.stderr.flush()
        self.console = os.dup(1)
        self.console_err = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        self.read_end = read_end
        self.busy = False  # the pump holds a chunk not yet written out
        self.thread = threading.Thread(target=self._pump, name="rank-log", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        while chunk := os.read(self.read_end, 65536):
            self.busy = True
            self.file.write(chunk)
            try:
                os.write(self.console, chunk)
            except OSError:
                pass  # the console went away (launcher killed); keep the file complete
            self.busy = False

    def stop(self) -> None:
        """Restore the console and wait until everything written so far is in the file."""
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.dup2(self.console, 1)
        os.dup2(self.console_err, 2)
        # The pipe reaches EOF once no fd refers to its write end, but a DataLoader worker alive until
        # the interpreter's exit hooks may hold one: wait for EOF or for the pipe to be drained.
        deadline = time.monotonic() + 5.0
        while self.thread.is_alive() and time.monotonic() < deadline:
            self.thread.join(timeout=0.05)
            if not self.busy and _bytes_waiting(self.read_end) == 0:
                break
        if not self.thread.is_alive():
            self.file.close()  # else the pump may still write a late chunk; the process exit closes it


def environment_from_slurm(environ: dict[str, str] | os._Environ = os.environ) -> dict[str, str]:
    """torch.distributed's variables from those srun sets for each task (one task per process)."""
    missing = [n for n in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "MASTER_ADDR", "MASTER_PORT")
               if n not in environ]
    if missing:
        raise SystemExit(f"launch.worker --from-slurm: {', '.join(missing)} not set (run it under srun from the "
                         "script `mdeq launch slurm --mode srun` writes)")
    # SLURM_TASKS_PER_NODE looks like "2(x3)" or "2,1": this node's entry is the local world size
    per_node = environ.get("SLURM_NTASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1").split("(")[0].split(",")[0]
    return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
            "LOCAL_RANK": environ["SLURM_LOCALID"], "LOCAL_WORLD_SIZE": per_node,
            "GROUP_RANK": environ.get("SLURM_NODEID", "0"), "NODE_RANK": environ.get("SLURM_NODEID", "0")}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        cut = argv.index("--")
        own, program = argv[:cut], argv[cut + 1:]
    else:
        own, program = argv, []
    parser = argparse.ArgumentParser(prog="python -m launch.worker")
    parser.add_argument("--log-dir", default=None, help="write rank-<RANK>.log here")
    parser.add_argument("--script", default=None, help="run this Python file instead of the mdeq command")
    parser.add_argument("--from-slurm", action="store_true",
                        help="take RANK/WORLD_SIZE/LOCAL_RANK from srun's SLURM_* variables")
    return parser.parse_args(own), program


def run(argv: list[str]) -> int:
    args, program = parse_args(argv)
    if args.from_slurm:
        os.environ.update(environment_from_slurm())
    tee = RankLogTee(Path(args.log_dir) / f"rank-{rank_from_environment()}.log") if args.log_dir else None
    code = 1
    try:
        if args.script:
            sys.argv = [args.script, *program]
            try:
                runpy.run_path(args.script, run_name="__main__")
                code = 0
            except SystemExit as stop:
                if stop.code is not None and not isinstance(stop.code, int):
                    print(stop.code, file=sys.stderr)  # what the interpreter would print for sys.exit("msg")
                code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        else:
            from launch.cli.main import main

            code = main(program)
    except Exception:
        # Print while the tee is active so the traceback lands in the rank's log too.
        traceback.print_exc()
        code = 1
    finally:
        if tee is not None:
            tee.stop()
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
