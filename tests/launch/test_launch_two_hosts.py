"""Two real "hosts" (network namespaces joined by a veth pair), one torchrun node in each.

- the layout: ranks, world size and master across the hosts, gloo on the veth interface, per-rank logs;
- preflight across hosts: an unreachable master, and node 0 given another host's address;
- the tiny MDEQ trained with DeepSpeed ZeRO-2 across both hosts via ``mdeq train``, rank 0 logging
  to MLflow; one host's processes killed mid-run; the relaunched job resumes from the last committed
  checkpoint and finishes in the same MLflow run.

Needs root and iproute2 (CI has both; ``.ci/run`` installs iproute2). Elsewhere it skips with that
reason, and fails instead when MDEQ_REQUIRE_ALL_TESTS=1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from netns_hosts import Host, namespace_exists, netns_unavailable_reason, two_hosts

from trainer.distributed import free_port

SCRIPTS = Path(__file__).resolve().parent / "scripts"
PYTHON = sys.executable


@pytest.fixture
def hosts():
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)  # a failure instead under MDEQ_REQUIRE_ALL_TESTS=1 (tests/conftest.py)
    with two_hosts() as pair:
        yield pair
    for host in pair:
        assert not namespace_exists(host.namespace), f"namespace {host.namespace} left behind"


def start_node(host: Host, rank: int, master: Host, port: int, tail: list[str], cwd: Path, log_dir: Path,
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """``mdeq launch torchrun`` for node ``rank`` inside ``host``; gloo bound to the host's veth."""
    cmd = host.command([PYTHON, "-m", "launch.cli.main", "launch", "torchrun", "--nnodes", "2",
                        "--node-rank", str(rank), "--master-addr", master.address, "--master-port", str(port),
                        "--nproc-per-node", "1", "--log-dir", str(log_dir),
                        "--env", f"GLOO_SOCKET_IFNAME={host.interface}",
                        # both "hosts" share this machine's cores: one thread each, no oversubscription
                        "--env", "OMP_NUM_THREADS=1",
                        # a CPU (gloo) test even on a GPU machine: two "hosts" cannot share one GPU
                        "--env", "CUDA_VISIBLE_DEVICES=", *tail])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}  # preflight counts cores, not GPUs
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"node did not finish in {timeout} s:\n{out[-4000:]}")
    return out


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_two_hosts_rendezvous_over_veth(hosts, tmp_path):
    a, b = hosts
    port = free_port()
    nodes = [start_node(h, k, a, port, ["--script", str(SCRIPTS / "allreduce.py")], tmp_path, tmp_path / "logs",
                        {"MLFLOW_TRACKING_URI": "sqlite:////nowhere/mlflow.db"})
             for k, h in enumerate(hosts)]
    outs = [finish(node, 90) for node in nodes]
    for node, out in zip(nodes, outs):
        assert node.returncode == 0, out[-4000:]
    layouts = {}
    for rank in range(2):
        text = (tmp_path / "logs" / f"rank-{rank}.log").read_text()
        layouts[rank] = json.loads(next(line for line in text.splitlines() if line.startswith("LAYOUT "))[7:])
    for rank, host in enumerate(hosts):
        got = layouts[rank]
        assert got["rank"] == rank and got["world_size"] == 2 and got["local_rank"] == 0
        assert got["master_addr"] == a.address and got["master_port"] == str(port)
        assert got["sum"] == 3.0  # 1 + 2: the all-reduce crossed the veth
        assert got["gloo_ifname"] == host.interface
        assert got["mlflow_uri"] == "sqlite:////nowhere/mlflow.db"  # tracking variables forwarded


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_preflight_across_hosts(hosts, tmp_path):
    a, b = hosts
    # host B asks for a master on its own link that no host answers for: unreachable, exit 2
    ghost = a.address.rsplit(".", 1)[0] + ".99"
    done = subprocess.run(b.command([PYTHON, "-m", "launch.cli.main", "launch", "torchrun", "--nnodes", "2",
                                     "--node-rank", "1", "--master-addr", ghost, "--master-timeout", "2",
                                     "--script", str(SCRIPTS / "print_env.py")]),
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 2, done.stdout + done.stderr
    assert re.fullmatch(rf"mdeq launch: error: master {re.escape(ghost)}:29500 is unreachable from this host .*\n",
                        done.stderr), done.stderr
    # node 0 must run on the master: host A given host B's address is refused
    done = subprocess.run(a.command([PYTHON, "-m", "launch.cli.main", "launch", "torchrun", "--nnodes", "2",
                                     "--node-rank", "0", "--master-addr", b.address,
                                     "--script", str(SCRIPTS / "print_env.py")]),
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 2 and "not an address of this host" in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------
# Training across the two hosts, losing one, resuming


MAX_STEPS = 10


def write_tiny_job(root: Path) -> Path:
    """Synthetic ImageNet (4 classes, 16x16) as shards, and a ZeRO-2 bf16 config for the tiny MDEQ."""
    import data_pipelines as data

    data.synth_imagenet(root / "raw", classes=4, train_per_class=8, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(root / "raw", root / "shards/train", split="train", samples_per_shard=4,
                               progress=False)
    data.write_imagenet_shards(root / "raw", root / "shards/val", split="val", samples_per_shard=4, progress=False)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{name: tiny, num_classes: 4}}
data: {{dataset: imagenet, train_shards: {root}/shards/train, val_shards: {root}/shards/val, image_size: 16,
        eval_resize: 16, batch_size: 4, workers: 0, shuffle_buffer: 8}}
train: {{max_steps: {MAX_STEPS}, eval_every: 0, log_every: 1, seed: 0}}
optim: {{name: adam, lr: 0.002, weight_decay: 0.0, schedule: constant}}
deepspeed: {{zero_stage: 2, precision: bf16}}
deq: {{f_max_iter: 3, b_max_iter: 3, pretrain_steps: 2}}
checkpoint: {{dir: {root}/run/checkpoints, every_steps: 2, keep_last: 3}}
tracking: {{uri: "sqlite:///{root}/mlflow.db", experiment: two-hosts, system_metrics: false}}
""")
    return config


def committed_steps(checkpoint_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("_")[1]) for p in checkpoint_dir.glob("step_*/COMMITTED.json"))


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_zero2_training_across_two_hosts_resumes_after_losing_one(hosts, tmp_path):
    a, b = hosts
    config = write_tiny_job(tmp_path)
    checkpoints = tmp_path / "run/checkpoints"
    logs = tmp_path / "logs"
    tail = ["--", "train", "--config", str(config)]

    # first launch: wait for a committed checkpoint, then host B dies (every process in it, SIGKILL)
    timings: dict[str, float] = {}
    started = time.monotonic()
    port = free_port()
    nodes = [start_node(h, k, a, port, tail, tmp_path, logs) for k, h in enumerate(hosts)]
    deadline = time.time() + 150
    while not committed_steps(checkpoints):
        if any(node.poll() is not None for node in nodes) or time.time() > deadline:
            outs = [finish(node, 5) if node.poll() is not None else "(running)" for node in nodes]
            pytest.fail("no checkpoint was committed before a node ended:\n" + "\n".join(o[-3000:] for o in outs))
        time.sleep(0.1)
    timings["to first commit"] = time.monotonic() - started
    assert b.kill_all(), "nothing was running in host B"
    killed = time.monotonic()
    finish(nodes[1], 30)
    out_a = finish(nodes[0], 90)  # host A's ranks lose their peer and the node fails on its own
    assert nodes[0].returncode != 0, out_a[-3000:]
    timings["host A fails after B's death"] = time.monotonic() - killed
    assert committed_steps(checkpoints)[-1] < MAX_STEPS, "the run finished before host B was killed"
    resume_from = committed_steps(checkpoints)[-1]

    # relaunch the job on both hosts: it resumes from the newest committed checkpoint and finishes
    relaunched = time.monotonic()
    port = free_port()
    nodes = [start_node(h, k, a, port, tail, tmp_path, logs) for k, h in enumerate(hosts)]
    outs = [finish(node, 150) for node in nodes]
    timings["resumed run to the end"] = time.monotonic() - relaunched
    print("two-host phases (s):", {k: round(v, 1) for k, v in timings.items()})
    for node, out in zip(nodes, outs):
        assert node.returncode == 0, out[-4000:]
    assert committed_steps(checkpoints)[-1] == MAX_STEPS

    # rank 0's log: the second attempt started at the committed step, not at 0
    attempts = (logs / "rank-0.log").read_text().split("=== ")
    assert re.search(rf"steps {resume_from}→{MAX_STEPS}", attempts[-1]), attempts[-1][-3000:]
    assert re.search(rf"steps 0→{MAX_STEPS}", attempts[-2])

    # MLflow (rank 0 only): one run, resumed and finished, with metrics up to the last step
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("two-hosts")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    steps = sorted({m.step for m in history})
    assert steps[-1] == MAX_STEPS and resume_from + 1 in steps and 1 in steps
