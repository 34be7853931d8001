"""`mdeq launch slurm --submit` on a real two-node Slurm cluster (``launch.dev.slurm_cluster``).

One cluster for the module: munged, slurmctld on a bridge, two slurmd nodes (2 CPUs each) in their
own network namespaces. The jobs are what a user would submit (``--nodes 2``, the rendezvous from the
allocation, shared checkpoint and MLflow paths on this machine's disk). Each training job's final
weights are compared bitwise with one uninterrupted ``mdeq launch local --nproc 2`` run of the same
config (same process count and rank order, CPU).

- layout: both ``--mode torchrun`` and ``--mode srun`` give every rank its rank, node and master;
  ``--cpus-per-task`` reaches srun (the task is bound to that many cores);
- restart budget: a failed step is requeued by the script while ``--max-restarts`` lasts, a
  preempted one (exit 75) without using it up, and the job fails once it is used up;
- ``--mode torchrun``, one ZeRO-2 bf16 job interrupted twice: its time limit is cut so that
  ``--signal=B:USR1@N`` falls due but the limit itself is still over a minute away (the ranks are paused until Slurm, which checks limits every 30 s,
  sends it; every rank commits, the script requeues), then ``scontrol requeue`` mid-run; the job
  resumes each time, completes in the same MLflow run, and ``--status`` shows it;
- ``--mode srun``, one job failing twice: a rank crashes in a save (the script requeues the job,
  restart 1 of 3), then every process of node 2 is SIGKILLed mid-run (Slurm declares the node down
  and requeues the job by itself); it completes once the test restarts node 2's slurmd.

A requeued job waits ~2 minutes on ``BeginTime``; the tests release it with
``scontrol update jobid=J starttime=now`` two seconds after they see it parked (``release_requeued``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.dev.slurm_cluster import SlurmCluster, namespace_pids, unavailable_reason
from launch.dev.slurm_layout import new_layout

SCRIPTS = Path(__file__).resolve().parent / "scripts"
PYTHON = sys.executable
MAX_STEPS = 10

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("MDEQ_REQUIRE_ALL_TESTS") == "1":
            pytest.fail(f"Slurm cluster tests cannot run: {reason} (MDEQ_REQUIRE_ALL_TESTS=1)")
        pytest.skip(reason)
    started = time.monotonic()
    cluster = SlurmCluster(new_layout(tmp_path_factory.mktemp("slurm")))
    try:
        cluster.up()
        print(f"cluster up in {time.monotonic() - started:.1f} s")
        yield cluster
    finally:
        cluster.down()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20).stdout
    assert cluster.layout.tag not in listing, f"namespaces left behind: {listing}"


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Synthetic ImageNet (4 classes, 16x16) as shards, shared by every run."""
    import data_pipelines as data

    root = tmp_path_factory.mktemp("data")
    data.synth_imagenet(root / "raw", classes=4, train_per_class=8, val_per_class=2, size=16, seed=0)
    for split in ("train", "val"):
        data.write_imagenet_shards(root / "raw", root / split, split=split, samples_per_shard=4, progress=False)
    return root


def write_config(run: Path, shards: Path) -> Path:
    """The tiny MDEQ, ZeRO-2 bf16, a commit every 2 steps; checkpoints and MLflow under ``run``."""
    run.mkdir(parents=True, exist_ok=True)
    config = run / "tiny.yaml"
    config.write_text(f"""
model: {{name: tiny, num_classes: 4}}
data: {{dataset: imagenet, train_shards: {shards}/train, val_shards: {shards}/val, image_size: 16,
        eval_resize: 16, batch_size: 4, workers: 0, shuffle_buffer: 8}}
train: {{max_steps: {MAX_STEPS}, eval_every: 0, log_every: 1, seed: 0, output_dir: {run}/out}}
optim: {{name: adam, lr: 0.002, weight_decay: 0.0, schedule: constant}}
deepspeed: {{zero_stage: 2, precision: bf16}}
deq: {{f_max_iter: 3, b_max_iter: 3, pretrain_steps: 2}}
checkpoint: {{dir: {run}/checkpoints, every_steps: 2, keep_last: 2, grace_seconds: 20}}
tracking: {{uri: "sqlite:///{run}/mlflow.db", experiment: slurm, system_metrics: false}}
""")
    return config


def final_weights(run: Path) -> dict:
    import torch

    return torch.load(run / "checkpoints" / f"step_{MAX_STEPS:09d}" / "model.pt", weights_only=True)["state_dict"]


def committed_steps(run: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in (run / "checkpoints").glob("step_*/COMMITTED.json"))


# Both "nodes" run on this machine's cores: one thread per rank, no GPU, as in the reference run.
RANK_ENV = ["--env", "OMP_NUM_THREADS=1", "--env", "CUDA_VISIBLE_DEVICES="]


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory) -> dict:
    """Final weights of the uninterrupted run: ``mdeq launch local --nproc 2``."""
    run = tmp_path_factory.mktemp("reference")
    config = write_config(run, shards)
    started = time.monotonic()
    done = subprocess.run([PYTHON, "-m", "launch.cli.main", "launch", "local", "--nproc", "2", "--max-restarts", "0",
                           "--log-dir", str(run / "logs"), *RANK_ENV, "--", "train", "--config", str(config)],
                          cwd=run, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"reference run: {time.monotonic() - started:.1f} s")
    return final_weights(run)


def assert_same_weights(got: dict, expected: dict) -> None:
    import torch

    assert got.keys() == expected.keys()
    different = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"


# ---------------------------------------------------------------------------------------------
# Driving jobs


def submit(cluster: SlurmCluster, run: Path, *options: str, tail: list[str]) -> str:
    """``mdeq launch slurm ... --submit`` in ``run``; the job id it printed."""
    done = subprocess.run([PYTHON, "-m", "launch.cli.main", "launch", "slurm", "--nodes", "2", "--gpus-per-node", "0",
                           "--log-dir", str(run / "logs"), *RANK_ENV, *options, "--submit", "--", *tail],
                          cwd=run, capture_output=True, text=True, timeout=120, env={**os.environ, **cluster.env})
    assert done.returncode == 0, done.stdout + done.stderr
    match = re.search(r"^Submitted batch job (\d+)$", done.stdout, re.M)
    assert match, done.stdout
    job = match.group(1)
    # the printed guide names the real log files of this job
    assert f"squeue -j {job}" in done.stdout and str(run / "logs" / f"mdeq-{job}.out") in done.stdout
    return job


def job_fields(cluster: SlurmCluster, job: str) -> dict[str, str]:
    done = cluster.command("scontrol", "show", "job", "-o", job)
    assert done.returncode == 0, done.stderr
    return dict(re.findall(r"(\w+)=(\S*)", done.stdout))


# what a job that will not run again shows; a requeue passes through other states (COMPLETING, REQUEUED ...)
ENDED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "COMPLETED"}


# (job, restarts) -> when the test first saw that requeue parked on BeginTime
_PARKED_SINCE: dict[tuple[str, str], float] = {}


def release_requeued(cluster: SlurmCluster, job: str, fields: dict[str, str]) -> None:
    """Start a requeued job parked on BeginTime - two seconds after the test first saw it parked.

    The previous run's end revokes the job's credential on its nodes, and slurmd compares credential
    times in whole seconds: a new run allocated in that same second is refused ("Job credential
    revoked", the job ends FAILED). The revocation happens before the requeue shows as PENDING, so
    two seconds after that sighting the new run's credential is always later. (A pending job's EndTime
    is a projection, not the previous run's end.) Slurm's own ~2 min BeginTime is far past that."""
    if fields["JobState"] != "PENDING" or fields.get("Reason") != "BeginTime":
        return
    parked = _PARKED_SINCE.setdefault((job, fields.get("Restarts", "")), time.time())
    if time.time() >= parked + 2:
        cluster.command("scontrol", "update", f"jobid={job}", "starttime=now")


def drive(cluster: SlurmCluster, job: str, run: Path, timeout: float, until: str = "COMPLETED") -> dict[str, str]:
    """Wait until the job reaches state ``until``, releasing it whenever a requeue parks it on BeginTime."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(cluster, job)
        state = fields["JobState"]
        if state == until:
            return fields
        if state in ENDED:
            pytest.fail(f"job {job} ended {state} ({fields.get('Reason')}):\n{job_logs(run, job)}")
        release_requeued(cluster, job, fields)
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} still {state} ({fields.get('Reason')}) after {timeout} s:\n{job_logs(run, job)}")
        time.sleep(0.2)


def job_logs(run: Path, job: str) -> str:
    parts = []
    for path in sorted((run / "logs").glob(f"mdeq-{job}*")) + sorted((run / "logs" / "ranks").glob("rank-*.log")):
        parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-2500:]}")
    return "\n".join(parts)


def wait_for_commit(run: Path, cluster: SlurmCluster, job: str, timeout: float, after: int = 0) -> int:
    """Until a checkpoint newer than step ``after`` is committed (releasing a requeued job); its step."""
    deadline = time.monotonic() + timeout
    while not committed_steps(run) or committed_steps(run)[-1] <= after:
        fields = job_fields(cluster, job)
        if time.monotonic() > deadline or fields["JobState"] in ENDED:
            pytest.fail(f"no checkpoint after step {after} committed by job {job} ({fields['JobState']}):\n"
                        f"{job_logs(run, job)}")
        release_requeued(cluster, job, fields)
        time.sleep(0.05)
    return committed_steps(run)[-1]


def rank_pids(cluster: SlurmCluster) -> list[int]:
    """The training processes (``launch.worker``) on every node."""
    pids = []
    for node in cluster.layout.nodes:
        for pid in namespace_pids(node.namespace):
            try:
                if b"launch.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    pids.append(pid)
            except OSError:
                pass
    return pids


def signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def finished_in_one_mlflow_run(run: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{run}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("slurm").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", [(r.info.run_id, r.info.status) for r in runs]
    steps = sorted({m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")})
    assert steps == list(range(1, MAX_STEPS + 1)), steps


def attempt_starts(run: Path) -> list[int]:
    """The step each attempt of rank 0 started at, in order."""
    attempts = (run / "logs" / "ranks" / "rank-0.log").read_text().split("=== ")[1:]
    starts = [re.search(rf"steps (\d+)→{MAX_STEPS}", attempt) for attempt in attempts]
    assert all(starts), attempts[-1][-3000:]
    return [int(match.group(1)) for match in starts]


def batch_attempts(run: Path, job: str) -> list[str]:
    """The batch script's log, one part per attempt (each starts with the script's header line)."""
    text = (run / "logs" / f"mdeq-{job}.out").read_text()
    return re.split(rf"^(?=mdeq: job {job} on \S+, restart \d+$)", text, flags=re.M)[1:]


TRAIN = ["--cpus-per-task", "2"]


def train_tail(run: Path, shards: Path) -> list[str]:
    return ["train", "--config", str(write_config(run, shards))]


def pending_signal(pid: int, signum: int) -> bool:
    """True when ``signum`` waits for the (stopped) process ``pid`` to run again."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True  # gone: nothing left to wait for
    pending = 0
    for line in status.splitlines():
        if line.startswith(("SigPnd:", "ShdPnd:")):
            pending |= int(line.split()[1], 16)
    return bool(pending & (1 << (signum - 1)))


def pause_until_signalled(pids: list[int], signum: int, trigger, timeout: float, what: str) -> None:
    """Stop the ranks (SIGSTOP), run ``trigger``, and let them continue once each has ``signum`` pending:
    a 10-step job stays mid-run for as long as Slurm takes to act, whatever the machine's speed."""
    assert pids, "no rank processes found"
    signal_all(pids, signal.SIGSTOP)
    try:
        trigger()
        deadline = time.monotonic() + timeout
        while not all(pending_signal(pid, signum) for pid in pids):
            assert time.monotonic() < deadline, f"{what}: not every rank received {signal.Signals(signum).name}"
            time.sleep(0.1)
    finally:
        signal_all(pids, signal.SIGCONT)


def run_seconds(text: str) -> int:
    """scontrol's RunTime (``[D-]HH:MM:SS``) in seconds."""
    days, _, clock = text.rpartition("-")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def check_resumed_run(run: Path, job: str, fields: dict[str, str], reference: dict, restarts: int) -> list[int]:
    """Each requeued attempt resumed from a commit made mid-run by the one before, in the same MLflow
    run, with the reference's weights; returns the step each attempt started at."""
    assert int(fields["Restarts"]) == restarts, fields
    starts = attempt_starts(run)
    assert len(starts) == restarts + 1 and starts[0] == 0, starts
    assert all(a < b < MAX_STEPS for a, b in zip(starts, starts[1:])), f"attempts started at steps {starts}"
    for rank in (0, 1):
        log = (run / "logs" / "ranks" / f"rank-{rank}.log").read_text()
        for restart in range(1, restarts + 1):
            assert f"SLURM_RESTART_COUNT={restart}" in log, f"rank {rank}: no attempt {restart}"
    assert_same_weights(final_weights(run), reference)
    finished_in_one_mlflow_run(run)
    return starts


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["torchrun", "srun"])
def test_every_rank_gets_its_layout_and_cpus_on_two_slurm_nodes(cluster, tmp_path, mode):
    # torchrun: one 2-CPU task per node running 2 workers; srun: two 1-CPU tasks per node
    cpus = 2 if mode == "torchrun" else 1
    job = submit(cluster, tmp_path, "--mode", mode, "--nproc-per-node", "2", "--cpus-per-task", str(cpus),
                 "--time", "5", "--script", str(SCRIPTS / "slurm_layout.py"), tail=[])
    fields = drive(cluster, job, tmp_path, timeout=240)
    assert fields["NodeList"] == "mdeq-n[1-2]"
    lines = [line for log in sorted((tmp_path / "logs" / "ranks").glob("rank-*.log"))
             for line in log.read_text().splitlines() if line.startswith("ENV ")]
    envs = sorted((json.loads(line[4:]) for line in lines), key=lambda e: int(e["RANK"]))
    assert [e["RANK"] for e in envs] == ["0", "1", "2", "3"], job_logs(tmp_path, job)
    for rank, env in enumerate(envs):
        node = f"mdeq-n{rank // 2 + 1}"
        assert env["hostname"] == env["SLURMD_NODENAME"] == node, env
        assert env["WORLD_SIZE"] == "4" and env["LOCAL_RANK"] == str(rank % 2) and env["LOCAL_WORLD_SIZE"] == "2"
        assert env["GROUP_RANK"] == env["SLURM_NODEID"] == str(rank // 2)
        assert env["MASTER_ADDR"] == "mdeq-n1" and env["PYTHONUNBUFFERED"] == "1"
        assert env["cpus"] == cpus, f"rank {rank} is bound to {env['cpus']} cores, --cpus-per-task {cpus}"
    assert len({e["MASTER_PORT"] for e in envs}) == 1
    assert sorted(p.name for p in (tmp_path / "logs").glob(f"mdeq-{job}-node*.log")) == \
        [f"mdeq-{job}-node0.log", f"mdeq-{job}-node1.log"]


def wait_requeued(cluster: SlurmCluster, job: str, run: Path, restarts: int, timeout: float = 120) -> dict[str, str]:
    """Until the job waits again after its ``restarts``-th requeue."""
    deadline = time.monotonic() + timeout
    while True:
        fields = job_fields(cluster, job)
        if fields["JobState"] == "PENDING" and int(fields["Restarts"]) >= restarts:
            return fields
        if time.monotonic() > deadline:
            pytest.fail(f"job {job} not requeued ({fields['JobState']}, {fields.get('Reason')}):\n{job_logs(run, job)}")
        time.sleep(0.2)


def attempt_lines(run: Path, rank: int) -> list[str]:
    """The ``ATTEMPT`` lines of a rank's log (none before the rank started)."""
    log = run / "logs" / "ranks" / f"rank-{rank}.log"
    return [line for line in log.read_text().splitlines() if line.startswith("ATTEMPT ")] if log.exists() else []


@pytest.mark.timeout(300)
def test_failed_steps_are_requeued_until_max_restarts_and_a_requeue_by_slurm_is_not_counted(cluster, tmp_path):
    # attempt 0 runs until `scontrol requeue`; attempts 1 and 2: rank 1 fails
    job = submit(cluster, tmp_path, "--mode", "srun", "--nproc-per-node", "1", "--max-restarts", "1",
                 "--time", "5", "--script", str(SCRIPTS / "slurm_attempts.py"), tail=[])
    deadline = time.monotonic() + 120
    while not all(attempt_lines(tmp_path, rank) for rank in (0, 1)):
        assert time.monotonic() < deadline, job_logs(tmp_path, job)
        time.sleep(0.1)
    assert cluster.command("scontrol", "requeue", job).returncode == 0
    fields = drive(cluster, job, tmp_path, timeout=240, until="FAILED")
    assert fields["Restarts"] == "2" and fields["ExitCode"] in {"1:0", "143:0"}, fields
    requeued, failed_once, failed_twice = batch_attempts(tmp_path, job)
    assert "is being terminated: waiting for the ranks" in requeued and "requeueing" not in requeued, requeued
    # srun's status is its tasks' highest: rank 1's 1, or 143 for rank 0 if srun's TERM caught it
    assert re.search(rf"the job step failed \(exit (1|143)\): requeueing job {job}, restart 1 of --max-restarts 1\n",
                     failed_once), failed_once
    assert re.search(rf"the job step failed \(exit (1|143)\) and --max-restarts 1 restarts are used up: job {job} "
                     "fails", failed_twice), failed_twice
    assert (tmp_path / "logs" / f"mdeq-{job}.failures").read_text().strip() == "2"
    assert attempt_lines(tmp_path, 1) == ["ATTEMPT 0 RANK 1", "ATTEMPT 1 RANK 1", "ATTEMPT 2 RANK 1"]


@pytest.mark.timeout(900)
def test_time_limit_warning_then_scontrol_requeue_each_commit_requeue_and_resume(cluster, shards, reference, tmp_path):
    started = time.monotonic()
    job = submit(cluster, tmp_path, *TRAIN, "--time", "10", "--signal-seconds", "150",
                 tail=train_tail(tmp_path, shards))
    first = wait_for_commit(tmp_path, cluster, job, timeout=240)

    def cut_time_limit() -> None:
        # the limit becomes the first whole minute at least 75 s from now: the USR1@150 warning is due
        # at once, and Slurm (which checks limits every 30 s) cannot reach the limit itself before the
        # ranks have committed and the script has requeued the job
        elapsed = run_seconds(job_fields(cluster, job)["RunTime"])
        done = cluster.command("scontrol", "update", f"jobid={job}", f"timelimit={-(-(elapsed + 75) // 60)}")
        assert done.returncode == 0, done.stderr

    pause_until_signalled(rank_pids(cluster), signal.SIGUSR1, cut_time_limit, timeout=90,
                          what="time-limit warning")
    # the requeued job gets its submitted limit back, or the warning would be due again at once
    wait_requeued(cluster, job, tmp_path, restarts=1)
    cluster.command("scontrol", "update", f"jobid={job}", "timelimit=10")
    # attempt 1: once it has committed past where attempt 0 stopped, `scontrol requeue`
    wait_for_commit(tmp_path, cluster, job, timeout=240, after=max(first, committed_steps(tmp_path)[-1]))
    pause_until_signalled(rank_pids(cluster), signal.SIGTERM,
                          lambda: cluster.command("scontrol", "requeue", job), timeout=60, what="scontrol requeue")
    fields = drive(cluster, job, tmp_path, timeout=300)
    print(f"time-limit + scontrol-requeue job: {time.monotonic() - started:.1f} s")
    time_limit, requeued, last = batch_attempts(tmp_path, job)
    assert "mdeq: time limit near: checkpointing, then requeueing" in time_limit
    assert "is being terminated: waiting for the ranks" in requeued
    assert "requeueing" not in last, last
    rank0 = (tmp_path / "logs" / "ranks" / "rank-0.log").read_text()
    assert len(re.findall(r"preempted: checkpoint committed at step \d+", rank0)) == 2, rank0[-3000:]
    check_resumed_run(tmp_path, job, fields, reference, restarts=2)
    status = subprocess.run([PYTHON, "-m", "launch.cli.main", "launch", "slurm", "--status", job],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **cluster.env})
    assert status.returncode == 0, status.stderr
    print(status.stdout)
    assert f"job {job} (mdeq): COMPLETED" in status.stdout and "restarts: 2" in status.stdout
    assert f"last committed step: {MAX_STEPS} ({tmp_path / 'checkpoints'})" in status.stdout


@pytest.mark.timeout(900)
def test_crashed_rank_then_killed_node_are_requeued_and_the_job_completes(cluster, shards, reference, tmp_path):
    from trainer.checkpoint.checkpointer import CRASH_IN_SAVE_EXIT_CODE

    started = time.monotonic()
    # rank 1 (node 2) dies in the save of step 4 of the first attempt, before the commit
    job = submit(cluster, tmp_path, *TRAIN, "--mode", "srun", "--nproc-per-node", "1",
                 "--env", "MDEQ_TEST_CRASH_IN_SAVE=4:1", "--time", "10", tail=train_tail(tmp_path, shards))
    wait_requeued(cluster, job, tmp_path, restarts=1, timeout=300)
    assert committed_steps(tmp_path) == [2], committed_steps(tmp_path)
    # attempt 1 resumes from step 2; once it has committed again, every process of node 2 dies. The
    # survivor is paused until Slurm has requeued the job, as a GPU rank would hang in its NCCL
    # collective: a gloo rank fails at once, and srun's --kill-on-bad-exit then sends a step signal
    # that slurmctld keeps for retry (every 60 s) to the returning node - a later kill of the new step.
    wait_for_commit(tmp_path, cluster, job, timeout=240, after=2)
    survivors = rank_pids(cluster)
    signal_all(survivors, signal.SIGSTOP)
    try:
        assert cluster.kill_node("mdeq-n2"), "nothing ran on node 2"
        killed = time.monotonic()
        wait_requeued(cluster, job, tmp_path, restarts=2, timeout=120)
        requeued_after = time.monotonic() - killed
    finally:
        signal_all(survivors, signal.SIGCONT)
    assert cluster.node_states()["mdeq-n2"].startswith("down"), cluster.node_states()
    # slurmd comes back only once slurmctld has stopped retrying the old attempt's kill on node 2
    cluster.wait_controller_rpcs_done(timeout=60)
    cluster.start_slurmd("mdeq-n2")
    cluster.wait_nodes("idle", timeout=60, nodes=["mdeq-n2"])
    fields = drive(cluster, job, tmp_path, timeout=300)
    print(f"crash + node-failure job: {time.monotonic() - started:.1f} s (requeued {requeued_after:.1f} s after the kill)")
    assert fields["NodeList"] == "mdeq-n[1-2]"
    crashed, node_failed, _ = batch_attempts(tmp_path, job)
    assert f"task 1: Exited with exit code {CRASH_IN_SAVE_EXIT_CODE}" in crashed, crashed
    assert re.search(rf"the job step failed \(exit \d+\): requeueing job {job}, restart 1 of --max-restarts 3\n",
                     crashed), crashed
    assert "requeueing" not in node_failed, f"the script requeued the job, not Slurm:\n{node_failed}"
    assert (tmp_path / "logs" / f"mdeq-{job}.failures").read_text().strip() == "1", "the node failure was counted"
    check_resumed_run(tmp_path, job, fields, reference, restarts=2)
