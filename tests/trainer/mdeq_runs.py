"""Real ``mdeq train`` / ``mdeq eval`` processes on a tiny synthetic data set, for the run-safety tests.

Not a test module: the ownership, lock, durability and draw tests import it. Every run trains the
``tiny`` MDEQ on 16x16 synthetic images (4 classes), fp32 on the machine's default device, one
process per rank started directly (no launcher), so each exit code is the trainer's own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from trainer.distributed import free_port

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def make_data(root: Path) -> Path:
    """Train/val shards of a 4-class synthetic ImageNet at 16x16 under ``root``; returns ``root``."""
    import data_pipelines as data

    data.synth_imagenet(root / "raw", classes=4, train_per_class=8, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(root / "raw", root / "train", split="train", samples_per_shard=8, progress=False)
    data.write_imagenet_shards(root / "raw", root / "val", split="val", samples_per_shard=4, progress=False)
    return root


def write_config(run_dir: Path, data: Path, ckpt: Path, **overrides) -> Path:
    """A config for ``run_dir`` (``section__key=value`` overrides); returns its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "model": {"name": "tiny", "num_classes": 4},
        "data": {"dataset": "imagenet", "train_shards": str(data / "train"), "val_shards": str(data / "val"),
                 "image_size": 16, "eval_resize": 16, "batch_size": 4, "workers": 0, "eval_max_batches": 1},
        "train": {"max_steps": 4, "eval_every": 0, "log_every": 1, "seed": 0, "output_dir": str(run_dir)},
        "optim": {"name": "sgd", "lr": 0.05},
        "deepspeed": {"zero_stage": 0, "precision": "fp32"},
        "deq": {"f_solver": "broyden", "f_max_iter": 4, "b_max_iter": 4, "pretrain_steps": 1},
        "checkpoint": {"dir": str(ckpt), "every_steps": 2, "keep_last": 2},
        "tracking": {"enabled": False, "system_metrics": False},
    }
    for key, value in overrides.items():
        section, field = key.split("__")
        config[section][field] = value
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def rank_env(rank: int, world: int, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank),
               WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               **extra)
    return env


def start(argv: list[str], log: Path, *, world: int = 1, prefix: list[str] | None = None,
          env_of=None, **env: str) -> list[subprocess.Popen]:
    """``world`` processes of ``mdeq <argv>``, each in its own session, output to ``log``.rank<r>.

    ``prefix(rank)`` (e.g. an strace command) goes before the python command; ``env_of(rank)`` adds
    per-rank variables.
    """
    port = free_port()
    procs = []
    for rank in range(world):
        extra = dict(env, **(env_of(rank) if env_of else {}))
        with open(f"{log}.rank{rank}", "w") as out:
            procs.append(subprocess.Popen(
                [*(prefix(rank) if prefix else []), PYTHON, "-m", "launch.cli.main", *argv], stdout=out,
                stderr=subprocess.STDOUT, env=rank_env(rank, world, port, **extra), cwd=REPO,
                start_new_session=True))
    return procs


def wait(procs: list[subprocess.Popen], log: Path, timeout: float) -> list[int]:
    """Exit codes; on timeout every process group is SIGKILLed and the test fails with the logs."""
    deadline = time.monotonic() + timeout
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            kill(procs)
            raise AssertionError(f"no exit within {timeout} s; logs:\n{logs(log)[-4000:]}") from None
    return codes


def kill(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                proc.kill()
            proc.wait()


def logs(log: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log.parent.glob(f"{log.name}.rank*")))


def train(config: Path, log: Path, *, world: int = 1, timeout: float = 300, sets: tuple[str, ...] = (),
          **env: str) -> tuple[list[int], str]:
    """Run ``mdeq train`` to the end: (exit codes, output)."""
    argv = ["train", "--config", str(config)]
    for item in sets:
        argv += ["--set", item]
    procs = start(argv, log, world=world, **env)
    codes = wait(procs, log, timeout)
    return codes, logs(log)


def committed(ckpt: Path) -> list[int]:
    return sorted(int(d.name.split("_")[1]) for d in ckpt.glob("step_*") if (d / "COMMITTED.json").is_file())


def wait_for(predicate, timeout: float, what: str, procs: list[subprocess.Popen], log: Path) -> None:
    """Poll ``predicate`` (a condition on files) until true; fail with the logs if the processes die."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or (procs and all(p.poll() is not None for p in procs)):
            kill(procs)
            raise AssertionError(f"{what} did not happen; logs:\n{logs(log)[-4000:]}")
        time.sleep(0.05)
