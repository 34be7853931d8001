"""``mdeq launch local``: torchrun on this machine restarts failed workers, and each rank keeps a log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_local_restarts_failed_workers_and_logs_per_rank(tmp_path):
    done = subprocess.run([sys.executable, "-m", "launch.cli.main", "launch", "local", "--nproc", "2",
                           "--max-restarts", "1", "--log-dir", str(tmp_path / "logs"),
                           "--script", str(SCRIPTS / "fail_once.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})  # CPU processes, also on a GPU box
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"rank-{rank}.log").read_text()
        # one header per start, the restart counter in it, the output of both attempts
        assert "attempt 0 ===" in log and "attempt 1 ===" in log
        assert f"ATTEMPT 0 RANK {rank} WORLD 2" in log and f"ATTEMPT 1 RANK {rank} WORLD 2" in log
    assert "rank 1 fails once on purpose" in (tmp_path / "logs" / "rank-1.log").read_text()


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_deepspeed_launcher_over_ssh_forwards_the_environment(tmp_path):
    """The DeepSpeed launcher in its ssh (pdsh) mode, with a fake pdsh that gives the "remote" command an
    empty environment: GLOO_SOCKET_IFNAME (which DeepSpeed does not forward itself) and MLFLOW_* still
    arrive through the .deepspeed_env file; on CPU the slots become processes (--num_accelerators)."""
    import json

    from trainer.distributed import free_port

    port = free_port()
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    env = {**os.environ, "PATH": f"{SCRIPTS.parent / 'fake_ssh'}:{os.environ['PATH']}", "GLOO_SOCKET_IFNAME": "lo",
           "MLFLOW_TRACKING_URI": "sqlite:////forwarded.db", "DS_ACCELERATOR": "cpu"}
    done = subprocess.run([sys.executable, "-m", "launch.cli.main", "launch", "deepspeed", "--hostfile", "hostfile",
                           "--master-addr", "127.0.0.1", "--master-port", str(port),
                           "--log-dir", str(tmp_path / "logs"), "--env", "DS_ACCELERATOR=cpu",
                           "--script", str(SCRIPTS / "allreduce.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=140, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    layouts = []
    for rank in (0, 1):
        text = (tmp_path / "logs" / f"rank-{rank}.log").read_text()
        layouts.append(json.loads(next(line for line in text.splitlines() if line.startswith("LAYOUT "))[7:]))
    assert [(x["rank"], x["world_size"], x["sum"]) for x in layouts] == [(0, 2, 3.0), (1, 2, 3.0)]
    for layout in layouts:
        assert layout["master_addr"] == "127.0.0.1" and layout["master_port"] == str(port)
        assert layout["gloo_ifname"] == "lo" and layout["mlflow_uri"] == "sqlite:////forwarded.db"
