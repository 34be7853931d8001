"""Running one sweep point: ``mdeq train`` as a subprocess (default) or in this process.

The child MLflow run is created by the sweep (nested under the parent with the
``mlflow.parentRunId`` tag) and handed to the trainer through ``MLFLOW_RUN_ID``: MLflow's
``start_run`` resumes the run that variable names, so the trainer logs into the nested run
without knowing it is part of a sweep.

Peak memory of a point is sampled, not modelled: every 0.1 s the resident set size of the process
running the point and all its descendants (ranks, loader workers) is summed with psutil and the
highest sum kept; on CUDA the trainer process's ``max_memory_allocated`` is not visible from here,
which is why each point also carries the planner's estimate (``mdeq plan``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class RSSSampler:
    """Highest summed RSS of ``pid`` and its descendants while running (a daemon thread)."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> int:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self.peak = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Execution:
    """How a point's training ended."""

    ok: bool
    seconds: float
    peak_rss_bytes: int
    error: str = ""


def run_subprocess(config_path: Path, *, nproc: int, run_id: str | None, tracking_uri: str | None,
                   log_path: Path, timeout_s: float) -> Execution:
    """``mdeq train --config config_path`` (under torchrun when ``nproc`` > 1), output to ``log_path``."""
    train = ["-m", "launch.cli.main", "train", "--config", str(config_path)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *train]
    else:
        cmd = [sys.executable, *train]
    # A point is its own job: never inherit a launcher layout (an in-process point, or the sweep
    # itself running under torchrun, leaves RANK/MASTER_PORT... here; the child would reuse the port).
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
    env.pop("MLFLOW_RUN_ID", None)
    if run_id:
        env["MLFLOW_RUN_ID"] = run_id
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    start = time.perf_counter()
    with log_path.open("a") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        with RSSSampler(proc.pid) as sampler:
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                code = None
    seconds = time.perf_counter() - start
    if code == 0:
        return Execution(True, seconds, sampler.peak)
    why = f"timed out after {timeout_s:.0f} s" if code is None else f"exit code {code}"
    return Execution(False, seconds, sampler.peak, error=f"`mdeq train` {why}; see {log_path}")


def run_in_process(cfg, *, run_id: str | None) -> Execution:
    """``trainer.loop.train(cfg)`` in this process (one rank), for quick sweeps and tests."""
    from trainer.loop import train

    saved_env = {k: os.environ.get(k) for k in LAUNCHER_ENV}  # the trainer exports a 1-process layout
    if run_id:
        os.environ["MLFLOW_RUN_ID"] = run_id  # MLflow's start_run consumes (and removes) it
    start = time.perf_counter()
    try:
        with RSSSampler(os.getpid()) as sampler:
            train(cfg)
    except Exception as err:  # a failed point is recorded; the sweep goes on with the next one
        return Execution(False, time.perf_counter() - start, sampler.peak,
                         error=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    finally:
        os.environ.pop("MLFLOW_RUN_ID", None)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return Execution(True, time.perf_counter() - start, sampler.peak)

