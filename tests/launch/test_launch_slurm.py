"""The sbatch script ``mdeq launch slurm`` writes, and its argument checks, without a cluster.

What the script does on a real cluster (layout, --cpus-per-task, time-limit warning, requeue, node
failure) is tested against real Slurm daemons in ``test_launch_slurm_cluster.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launch.errors import LaunchError
from launch.slurm import PREEMPTED_EXIT_CODE, time_limit_seconds
from launch.slurm_status import status_lines


def launch_slurm(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`mdeq launch slurm ...` run in tmp_path (with a minimal config x.yaml there)."""
    (tmp_path / "x.yaml").write_text("train: {max_steps: 5}\n")
    return subprocess.run([sys.executable, "-m", "launch.cli.main", "launch", "slurm", *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MDEQ_TEST_MARKER": "forwarded", **(env or {})})


GPU_JOB = ["--nodes", "2", "--gpus-per-node", "4", "--time", "04:00:00", "--dry-run"]


def test_time_limits_parse_as_slurm_does():
    assert time_limit_seconds("30") == 1800
    assert time_limit_seconds("30:15") == 1815
    assert time_limit_seconds("04:00:00") == 4 * 3600
    assert time_limit_seconds("1-02") == 26 * 3600
    assert time_limit_seconds("1-00:00:30") == 86430
    with pytest.raises(LaunchError, match="not a SLURM time"):
        time_limit_seconds("4h")


def test_script_has_requeue_signal_checkpoint_dir_and_passes_bash_n(tmp_path):
    done = launch_slurm(tmp_path, *GPU_JOB, "--partition", "gpu", "--", "train", "--config", "x.yaml")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for directive in ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--time=04:00:00",
                      "--partition=gpu", "--requeue", "--signal=B:USR1@180"]:
        assert f"#SBATCH {directive}" in text
    assert "--nproc-per-node 4" in text and "train --config x.yaml" in text
    assert "export MDEQ_TEST_MARKER=forwarded" in text
    assert f"# mdeq checkpoint dir: {tmp_path / 'runs' / 'checkpoints'}" in text  # read by --status
    assert "SRUN_CPUS_PER_TASK" not in text  # nothing to pass on without --cpus-per-task
    (tmp_path / "job.sbatch").write_text(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sbatch")], capture_output=True).returncode == 0


@pytest.mark.parametrize("mode", ["torchrun", "srun"])
def test_a_failed_step_requeues_the_job_up_to_max_restarts_default_3(tmp_path, mode):
    done = launch_slurm(tmp_path, *GPU_JOB, "--mode", mode, "--", "train", "--config", "x.yaml")
    assert done.returncode == 0, done.stderr
    assert 'if [ "$failures" -le 3 ]; then' in done.stdout
    assert "restart $failures of --max-restarts 3" in done.stdout
    assert f"failures_file={tmp_path / 'runs' / 'logs'}/mdeq-$SLURM_JOB_ID.failures" in done.stdout
    # the requeue is the restart: torchrun inside the job never restarts workers itself
    assert mode == "srun" or "--max-restarts 0 --log-dir" in done.stdout
    done = launch_slurm(tmp_path, *GPU_JOB, "--mode", mode, "--max-restarts", "0", "--", "train", "--config", "x.yaml")
    assert done.returncode == 0 and 'if [ "$failures" -le 0 ]; then' in done.stdout, done.stderr


def test_cpus_per_task_is_passed_on_to_srun(tmp_path):
    done = launch_slurm(tmp_path, *GPU_JOB, "--cpus-per-task", "8", "--", "train", "--config", "x.yaml")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --cpus-per-task=8" in done.stdout
    assert "\nexport SRUN_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK\n" in done.stdout


def test_cpu_only_settings_of_this_shell_stay_out_of_a_gpu_job_and_are_named(tmp_path):
    shell = {"DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    done = launch_slurm(tmp_path, *GPU_JOB, "--", "train", "--config", "x.yaml", env=shell)
    assert done.returncode == 0, done.stderr
    assert "DS_ACCELERATOR" not in done.stdout and "CUDA_VISIBLE_DEVICES" not in done.stdout
    assert "not forwarding DS_ACCELERATOR=cpu from this shell into a job with --gpus-per-node 4" in done.stderr
    assert "pass --env DS_ACCELERATOR=cpu to force it" in done.stderr
    assert "not forwarding CUDA_VISIBLE_DEVICES= from this shell" in done.stderr
    # asked for explicitly: kept, and nothing to say
    done = launch_slurm(tmp_path, *GPU_JOB, "--env", "DS_ACCELERATOR=cpu", "--", "train", "--config", "x.yaml",
                        env={"DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0 and "export DS_ACCELERATOR=cpu" in done.stdout and done.stderr == ""
    # a CPU job keeps the shell's CPU setting
    done = launch_slurm(tmp_path, "--nodes", "2", "--gpus-per-node", "0", "--time", "10", "--dry-run", "--",
                        "train", "--config", "x.yaml", env={"DS_ACCELERATOR": "cpu"})
    assert done.returncode == 0 and "export DS_ACCELERATOR=cpu" in done.stdout and done.stderr == ""


@pytest.mark.parametrize("args, message", [
    (["--max-restarts", "-1", *GPU_JOB], "--max-restarts must be >= 0"),
    (["--gpus-per-node", "4", "--time", "10", "--dry-run"], "--nodes required"),
    (["--nodes", "2", "--gpus-per-node", "0", "--time", "10", "--signal-seconds", "600", "--dry-run"],
     "--signal-seconds 600 must be shorter than the time limit (600 s)"),
    (["--status", "12x"], "--status expects a job id"),
])
def test_bad_arguments_exit_2_with_one_message(tmp_path, args, message):
    done = launch_slurm(tmp_path, *args, "--", "train", "--config", "x.yaml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_status_shows_state_restarts_and_last_committed_step(tmp_path):
    script = tmp_path / "job.sbatch"
    checkpoints = tmp_path / "ckpt"
    script.write_text(f"#!/bin/bash\n# mdeq checkpoint dir: {checkpoints}\n")
    for step, committed in ((2, True), (4, True), (6, False)):  # step 6: a save that never finished
        (checkpoints / f"step_{step:09d}").mkdir(parents=True)
        if committed:
            (checkpoints / f"step_{step:09d}" / "COMMITTED.json").write_text("{}")
    fields = {"JobId": "7", "JobName": "mdeq", "JobState": "PENDING", "Reason": "BeginTime", "Restarts": "1",
              "RunTime": "00:00:00", "TimeLimit": "00:05:00", "Command": str(script), "StdOut": "/x/mdeq-7.out"}
    text = "\n".join(status_lines(fields))
    assert text.startswith("job 7 (mdeq): PENDING (BeginTime)")
    assert "restarts: 1\n" in text and f"last committed step: 4 ({checkpoints})" in text
    assert "batch log: /x/mdeq-7.out" in text
    # the script's count of failed steps, next to its log
    (tmp_path / "mdeq-7.failures").write_text("1\n")
    text = "\n".join(status_lines({**fields, "StdOut": str(tmp_path / "mdeq-7.out")}))
    assert "restarts: 1 (1 after a failed job step)\n" in text


def test_preempted_exit_code_is_the_trainers():
    from trainer.fault.exit_codes import PREEMPTED_EXIT_CODE as trainer_code

    assert PREEMPTED_EXIT_CODE == trainer_code
