"""The sbatch script: valid bash, and under a fake srun/scontrol laid out as SLURM does for 2 nodes, every
process gets the right rank, world size and master; USR1 before the time limit reaches every rank and
requeues the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.errors import LaunchError
from launch.slurm import time_limit_seconds
from trainer.distributed import free_port

HERE = Path(__file__).resolve().parent
FAKE_SLURM = HERE / "fake_slurm"
SCRIPTS = HERE / "scripts"


def generate(tmp_path: Path, *args: str) -> Path:
    """`mdeq launch slurm ... --dry-run` run in tmp_path; the printed script saved as job.sbatch."""
    done = subprocess.run([sys.executable, "-m", "launch.cli.main", "launch", "slurm", "--dry-run", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MDEQ_TEST_MARKER": "forwarded"})
    assert done.returncode == 0, done.stderr
    path = tmp_path / "job.sbatch"
    path.write_text(done.stdout)
    return path


def slurm_env(job_id: str, tmp_path: Path) -> dict[str, str]:
    """What sbatch puts in the batch script's environment for a 2-node allocation (nodes on loopback)."""
    return {**os.environ, "PATH": f"{FAKE_SLURM}:{os.environ['PATH']}", "SLURM_JOB_ID": job_id,
            "SLURM_JOB_NAME": "mdeq", "SLURM_JOB_NUM_NODES": "2", "SLURM_NNODES": "2",
            "SLURM_JOB_NODELIST": "127.0.0.1,127.0.0.2", "MDEQ_MASTER_PORT": str(free_port()),
            "FAKE_SLURM_RECORD": str(tmp_path / "record.txt"),
            "CUDA_VISIBLE_DEVICES": ""}  # 2 CPU processes per fake node, also on a machine with one GPU


def rank_envs(log_dir: Path) -> list[dict]:
    lines = [line for log in sorted(log_dir.glob("rank-*.log")) for line in log.read_text().splitlines()]
    return sorted((json.loads(line[4:]) for line in lines if line.startswith("ENV ")), key=lambda e: int(e["RANK"]))


def test_time_limits_parse_as_slurm_does():
    assert time_limit_seconds("30") == 1800
    assert time_limit_seconds("30:15") == 1815
    assert time_limit_seconds("04:00:00") == 4 * 3600
    assert time_limit_seconds("1-02") == 26 * 3600
    assert time_limit_seconds("1-00:00:30") == 86430
    with pytest.raises(LaunchError, match="not a SLURM time"):
        time_limit_seconds("4h")


def test_script_has_requeue_signal_and_passes_bash_n(tmp_path):
    (tmp_path / "x.yaml").write_text("train: {max_steps: 5}\n")
    path = generate(tmp_path, "--nodes", "2", "--gpus-per-node", "4", "--time", "04:00:00", "--partition", "gpu",
                    "--", "train", "--config", "x.yaml")
    text = path.read_text()
    for directive in ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=04:00:00",
                      "--partition=gpu", "--requeue", "--signal=B:USR1@180"]:
        assert f"#SBATCH {directive}" in text
    assert "--nproc-per-node 4" in text and "train --config x.yaml" in text
    assert "export MDEQ_TEST_MARKER=forwarded" in text
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["torchrun", "srun"])
def test_fake_srun_two_nodes_two_tasks_gives_every_rank_its_layout(tmp_path, mode):
    path = generate(tmp_path, "--mode", mode, "--nodes", "2", "--gpus-per-node", "2", "--time", "10",
                    "--script", str(SCRIPTS / "print_env.py"))
    done = subprocess.run(["bash", str(path)], env=slurm_env("4242", tmp_path), cwd=tmp_path,
                          capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout + done.stderr
    envs = rank_envs(tmp_path / "runs/logs/ranks")
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"]
    for rank, env in enumerate(envs):
        assert env["WORLD_SIZE"] == "4"
        assert env["LOCAL_RANK"] == str(rank % 2) and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["GROUP_RANK"] == str(rank // 2) and env["SLURM_NODEID"] == str(rank // 2)
        assert env["MASTER_ADDR"] == "127.0.0.1"
        assert env["PYTHONUNBUFFERED"] == "1"
    assert len({e["MASTER_PORT"] for e in envs}) == 1
    # per-node logs written by srun's --output pattern
    assert sorted(p.name for p in (tmp_path / "runs/logs").glob("mdeq-4242-node*.log")) == \
        ["mdeq-4242-node0.log", "mdeq-4242-node1.log"]


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_usr1_before_time_limit_reaches_every_rank_then_requeues(tmp_path):
    path = generate(tmp_path, "--mode", "srun", "--nodes", "2", "--gpus-per-node", "2", "--time", "10",
                    "--script", str(SCRIPTS / "wait_for_usr1.py"))
    job = subprocess.Popen(["bash", str(path)], env=slurm_env("4244", tmp_path), cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    logs = tmp_path / "runs/logs/ranks"
    deadline = time.time() + 30
    while sum("READY" in p.read_text() for p in logs.glob("rank-*.log")) < 4:
        assert time.time() < deadline and job.poll() is None, "ranks did not start"
        time.sleep(0.2)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@N does
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 0, out
    for rank in range(4):
        assert f"USR1 rank {rank}: checkpoint committed" in (logs / f"rank-{rank}.log").read_text()
    assert (tmp_path / "record.txt").read_text() == "requeue 4244\n"
