"""An elastic job across two real "hosts" (network namespaces): a lost node costs minutes, not the job.

``mdeq launch torchrun --nnodes 1:2 --rdzv-endpoint A:PORT`` on both hosts trains the tiny MDEQ
(ZeRO-1, fp32, global batch 8 = 2 processes x 4 or 1 process x 2 x 4). After the first commit every
process of host B is SIGKILLed; host A's agent re-forms the group alone, with no command, and its
worker resumes from the newest committed checkpoint on one process and commits further steps. Host B
is started again and joins at the next rendezvous; the run reaches ``max_steps`` in one MLflow run,
whose ``world_size`` metric and console show 2 -> 1 -> 2, and every sample of each epoch was used
exactly once (a replayed step reads the same global batch: the order does not depend on the layout).

``MDEQ_TEST_HOLD_WORLD=1`` keeps the one-process world from finishing the run before host B is back
(it stops training after its own first commit until the agent restarts it for the new member).
Needs root and iproute2, like tests/launch/test_launch_two_hosts.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from netns_hosts import Host, namespace_exists, netns_unavailable_reason, two_hosts

PYTHON = sys.executable
MAX_STEPS = 8
SAMPLES, GLOBAL_BATCH = 32, 8  # 4 steps per epoch; shards of 10, 10, 10 and 2 samples
STEPS_PER_EPOCH = SAMPLES // GLOBAL_BATCH


@pytest.fixture
def hosts():
    reason = netns_unavailable_reason()
    if reason is not None:
        if os.environ.get("MDEQ_REQUIRE_ALL_TESTS") == "1":
            pytest.fail(f"elastic launch test cannot run: {reason} (MDEQ_REQUIRE_ALL_TESTS=1)")
        pytest.skip(reason)
    with two_hosts() as pair:
        yield pair
    for host in pair:
        assert not namespace_exists(host.namespace), f"namespace {host.namespace} left behind"


def write_job(root: Path) -> Path:
    import data_pipelines as data

    data.synth_imagenet(root / "raw", classes=4, train_per_class=SAMPLES // 4, val_per_class=2, size=16, seed=0)
    data.write_imagenet_shards(root / "raw", root / "shards/train", split="train", samples_per_shard=10,
                               progress=False)
    data.write_imagenet_shards(root / "raw", root / "shards/val", split="val", samples_per_shard=8, progress=False)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{name: tiny, num_classes: 4, dropout: 0.0}}
data: {{dataset: imagenet, train_shards: {root}/shards/train, val_shards: {root}/shards/val, image_size: 16,
        eval_resize: 16, batch_size: 4, workers: 0, shuffle_buffer: 16, eval_max_batches: 1}}
train: {{max_steps: {MAX_STEPS}, global_batch_size: {GLOBAL_BATCH}, eval_every: 0, log_every: 1, seed: 0}}
optim: {{name: adam, lr: 0.002, weight_decay: 0.0, schedule: constant}}
deepspeed: {{zero_stage: 1, precision: fp32}}
deq: {{f_max_iter: 3, b_max_iter: 3, pretrain_steps: 2}}
checkpoint: {{dir: {root}/run/checkpoints, every_steps: 2, keep_last: 3}}
tracking: {{uri: "sqlite:///{root}/mlflow.db", experiment: elastic, system_metrics: false}}
""")
    return config


def start_node(host: Host, endpoint: str, tail: list[str], root: Path) -> subprocess.Popen:
    cmd = host.command([PYTHON, "-m", "launch.cli.main", "launch", "torchrun", "--nnodes", "1:2",
                        "--rdzv-endpoint", endpoint, "--rdzv-id", "elastic-test", "--local-addr", host.address,
                        "--nproc-per-node", "1", "--log-dir", str(root / "logs"),
                        "--env", f"GLOO_SOCKET_IFNAME={host.interface}", "--env", "OMP_NUM_THREADS=1",
                        "--env", "CUDA_VISIBLE_DEVICES=", "--env", f"MDEQ_SAMPLE_LOG={root / 'samples'}",
                        "--env", "MDEQ_TEST_HOLD_WORLD=1", *tail])
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    log = open(root / f"console-{host.namespace[-1]}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def commits(root: Path) -> dict[int, int]:
    """{step: world size} of every committed checkpoint."""
    out = {}
    for marker in (root / "run/checkpoints").glob("step_*/COMMITTED.json"):
        try:
            out[int(marker.parent.name.split("_")[1])] = json.loads(marker.read_text())["world_size"]
        except (OSError, ValueError):
            continue  # being pruned right now
    return out


def wait_until(predicate, timeout: float, what: str, nodes: list[subprocess.Popen], root: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline or all(node.poll() is not None for node in nodes):
            consoles = "\n".join(p.read_text()[-3000:] for p in sorted(root.glob("console-*.log")))
            pytest.fail(f"{what} did not happen within {timeout} s:\n{consoles}")
        time.sleep(0.1)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_elastic_job_loses_a_host_continues_alone_and_takes_it_back(hosts, tmp_path):
    a, b = hosts
    config = write_job(tmp_path)
    endpoint = f"{a.address}:29411"
    tail = ["--", "train", "--config", str(config)]
    node_a = start_node(a, endpoint, tail, tmp_path)
    node_b = start_node(b, endpoint, tail, tmp_path)
    wait_until(lambda: any(w == 2 for w in commits(tmp_path).values()), 240, "a 2-process commit",
               [node_a, node_b], tmp_path)
    assert b.kill_all(), "nothing was running in host B"
    killed = time.time()  # wall clock: the workers' sample log stamps their steps with it
    node_b.wait(timeout=30)
    lost_at = max(commits(tmp_path))

    # host A carries on alone: a commit written by a world of one process, after the kill
    wait_until(lambda: any(w == 1 for w in commits(tmp_path).values()), 240, "a 1-process commit on host A",
               [node_a], tmp_path)
    alone = min(s for s, w in commits(tmp_path).items() if w == 1)
    assert alone > lost_at and node_a.poll() is None

    node_b = start_node(b, endpoint, tail, tmp_path)  # host B is back: it joins at the next rendezvous
    for node in (node_a, node_b):
        node.wait(timeout=240)
    consoles = "\n".join(p.read_text() for p in sorted(tmp_path.glob("console-*.log")))
    assert node_a.returncode == 0 and node_b.returncode == 0, consoles[-5000:]
    final = commits(tmp_path)
    assert final[MAX_STEPS] == 2, final

    # console: the resizes, and the seconds from the kill to the first step on the smaller world
    assert re.search(r"world size changed: 2 → 1 processes", consoles), consoles[-5000:]
    assert re.search(r"world size changed: 1 → 2 processes", consoles), consoles[-5000:]
    first_small_step = _first_step_time(tmp_path, world=1)
    print(f"elastic: {first_small_step - killed:.1f} s from the kill to the first step on 1 process")

    # MLflow: one run, finished, world_size 2 -> 1 -> 2 over the steps
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("elastic").experiment_id])
    assert run.info.status == "FINISHED"
    sizes = [int(m.value) for m in sorted(client.get_metric_history(run.info.run_id, "world_size"),
                                          key=lambda m: (m.step, m.timestamp))]
    assert [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]] == [2, 1, 2], sizes
    steps = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert steps == set(range(1, MAX_STEPS + 1))

    # every step read one global batch, the same on every try and layout; each epoch every sample once
    keys_of_step: dict[int, set[str]] = defaultdict(set)
    for path in _sample_logs(tmp_path):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            keys_of_step[entry["step"]].update(entry["keys"])
    assert sorted(keys_of_step) == list(range(MAX_STEPS))
    assert all(len(keys) == GLOBAL_BATCH for keys in keys_of_step.values()), "a replayed step read other samples"
    for epoch in range(MAX_STEPS // STEPS_PER_EPOCH):
        used = [k for s in range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH) for k in keys_of_step[s]]
        assert len(used) == len(set(used)) == SAMPLES, f"epoch {epoch}"


def _sample_logs(root: Path) -> list[Path]:
    """The per-rank sample-key logs (``samples.rank<r>``), not their ``.draws`` companions."""
    return [path for path in root.glob("samples.rank*") if path.name.removeprefix("samples.rank").isdigit()]


def _first_step_time(root: Path, world: int) -> float:
    """Wall-clock time of the first train step logged by a process of a ``world``-process generation."""
    times = []
    for path in _sample_logs(root):
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("world") == world:
                times.append(entry["time"])
    assert times, f"no step was logged by a {world}-process world"
    return min(times)
