"""Every launch mistake ends before any process starts, in exit code 2 and one message saying what to do."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch.cli.main import main
from launch.errors import LaunchError
from launch.preflight import (
    MachineCapacity,
    check_master_reachable,
    check_nproc,
    check_port_free,
    machine_capacity,
    read_train_args,
)

SCRIPT = str(Path(__file__).resolve().parent / "scripts" / "print_env.py")


def run_mdeq(capsys, *argv: str) -> tuple[int, str]:
    """``mdeq`` in this process (every case fails before exec); returns (exit code, stderr)."""
    code = main(list(argv))
    return code, capsys.readouterr().err


def assert_one_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mdeq launch: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def listening_port():
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def write_shards(directory: Path, count: int) -> Path:
    """``count`` (empty) shard files: listing needs names, not contents."""
    directory.mkdir(parents=True)
    for i in range(count):
        (directory / f"train-{i:06d}.tar").write_bytes(b"")
    return directory


def test_train_args_are_read_from_after_the_separator():
    got = read_train_args(["train", "--config", "a.yaml", "--set", "x.y=1", "--json", "--set", "b.c=2"])
    assert got.config == "a.yaml" and got.overrides == ["x.y=1", "b.c=2"]


def test_port_in_use(capsys, listening_port):
    code, err = run_mdeq(capsys, "launch", "torchrun", "--nnodes", "2", "--node-rank", "0", "--master-addr",
                         "127.0.0.1", "--master-port", str(listening_port), "--script", SCRIPT)
    assert code == 2
    assert_one_error(err, f"master port {listening_port} is already in use", "--master-port")


TIME_WAIT = "06"  # the state's code in /proc/net/tcp


def tcp_states(port: int) -> set[str]:
    """The kernel's states of the IPv4 TCP sockets on local ``port`` (/proc/net/tcp: "06" is TIME_WAIT)."""
    states = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            states.add(fields[3])
    return states


def port_left_in_time_wait() -> int:
    """A port a finished run's rendezvous store leaves behind: its listener (SO_REUSEADDR, as torch's
    TCPStore sets it) accepted a connection and closed its end first, so that end sits in TIME_WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
    served.close()  # the store's side closes first: the side that closes first waits in TIME_WAIT
    assert client.recv(1) == b""  # its FIN arrived
    client.close()
    deadline = time.monotonic() + 10
    while TIME_WAIT not in tcp_states(port) and time.monotonic() < deadline:
        time.sleep(0.01)  # the last ACK crosses loopback; the state is the condition waited for
    assert TIME_WAIT in tcp_states(port), f"port {port}: states {tcp_states(port)}, no TIME_WAIT"
    return port


def test_port_free_passes():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check_port_free(port)


def test_port_in_time_wait_is_not_in_use():
    port = port_left_in_time_wait()
    check_port_free(port)
    with socket.socket() as plain, pytest.raises(OSError):  # what a bind without SO_REUSEADDR meets
        plain.bind(("", port))


def test_unresolvable_master(capsys):
    code, err = run_mdeq(capsys, "launch", "torchrun", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                         "no-such-host.invalid", "--script", SCRIPT)
    assert code == 2
    assert_one_error(err, "no-such-host.invalid", "does not resolve", "--master-addr")


def test_master_without_listener_is_reachable():
    # "connection refused" means the host answered: node 0 simply has not started yet
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check_master_reachable("127.0.0.1", port, timeout=2.0)


def test_nproc_larger_than_machine(capsys):
    code, err = run_mdeq(capsys, "launch", "local", "--nproc", "4096", "--script", SCRIPT)
    assert code == 2
    assert_one_error(err, "--nproc 4096 is more than this machine supports")


def test_nproc_counts_gpus_when_cuda_is_present():
    check_nproc(2, MachineCapacity(gpus=2, cpu_cores=64))
    with pytest.raises(LaunchError, match="2 CUDA GPU"):
        check_nproc(3, MachineCapacity(gpus=2, cpu_cores=64))
    with pytest.raises(LaunchError, match="4 CPU core"):
        check_nproc(5, MachineCapacity(gpus=0, cpu_cores=4))


def test_a_layout_the_canonical_streams_cannot_serve(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shards(tmp_path / "shards", 3)
    (tmp_path / "c.yaml").write_text("data: {train_shards: shards, workers: 2, batch_size: 3, streams: 3}\n"
                                     "train: {global_batch_size: 6}\ncheckpoint: {dir: ckpt}\n")
    code, err = run_mdeq(capsys, "launch", "torchrun", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                         "127.0.0.1", "--master-port", "1", "--", "train", "--config", "c.yaml")
    assert code == 2
    assert_one_error(err, "2 processes cannot share 3 canonical streams evenly")


def test_enough_shards_and_writable_checkpoint_dir_pass(tmp_path, monkeypatch):
    from launch.preflight import NodePlan, run_preflight

    monkeypatch.chdir(tmp_path)
    write_shards(tmp_path / "shards", 4)
    (tmp_path / "c.yaml").write_text("data: {train_shards: shards, workers: 2}\ncheckpoint: {dir: deep/ckpt}\n")
    cfg = run_preflight(NodePlan(world_size=2, nproc_per_node=1), ["train", "--config", "c.yaml"])
    assert cfg.data.workers == 2 and (tmp_path / "deep/ckpt").is_dir()


def test_unwritable_checkpoint_dir(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a directory")
    (tmp_path / "c.yaml").write_text("checkpoint: {dir: a-file/ckpt}\n")
    code, err = run_mdeq(capsys, "launch", "local", "--nproc", "1", "--", "train", "--config", "c.yaml")
    assert code == 2
    assert_one_error(err, "checkpoint dir a-file/ckpt is not writable", "checkpoint.dir")


def test_bad_config_key_is_reported_before_launch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("train: {max_step: 5}\n")
    code, err = run_mdeq(capsys, "launch", "local", "--nproc", "1", "--dry-run", "--", "train", "--config", "c.yaml")
    assert code == 2 and "max_step" in err and len(err.strip().splitlines()) == 1


def test_missing_hostfile(capsys, tmp_path):
    code, err = run_mdeq(capsys, "launch", "deepspeed", "--hostfile", str(tmp_path / "hosts"), "--script", SCRIPT)
    assert code == 2
    assert_one_error(err, "hostfile", "not found", "slots=")


def test_bad_hostfile_line(capsys, tmp_path):
    (tmp_path / "hosts").write_text("# two hosts\nworker-0 slots=2\nworker-1 gpus=2\n")
    code, err = run_mdeq(capsys, "launch", "deepspeed", "--hostfile", str(tmp_path / "hosts"), "--script", SCRIPT)
    assert code == 2
    assert_one_error(err, "hosts:3", "HOSTNAME slots=N")


def test_nothing_to_run(capsys):
    code, err = run_mdeq(capsys, "launch", "local", "--nproc", "1")
    assert code == 2
    assert_one_error(err, "nothing to run")


def gpus_listed_by_the_driver() -> int:
    """GPUs as the NVIDIA driver lists them (``nvidia-smi -L``), without torch; 0 without the driver."""
    if shutil.which("nvidia-smi") is None:
        return 0
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60)
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines()) if listed.returncode == 0 else 0


def capacity_in_a_fresh_process(**env: str) -> MachineCapacity:
    """``machine_capacity()`` in a new process (CUDA reads its visible devices once, at start)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DS_ACCELERATOR", "CUDA_VISIBLE_DEVICES")}
    code = ("import json; from launch.preflight import machine_capacity; c = machine_capacity(); "
            "print(json.dumps([c.gpus, c.cpu_cores]))")
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                          timeout=120, check=True)
    gpus, cores = json.loads(done.stdout.strip().splitlines()[-1])
    return MachineCapacity(gpus=gpus, cpu_cores=cores)


def test_machine_capacity_counts_the_cores_this_process_may_use():
    allowed = sorted(os.sched_getaffinity(0))
    try:
        for cores in ({allowed[0]}, set(allowed[:2])):
            os.sched_setaffinity(0, cores)
            assert machine_capacity().cpu_cores == len(cores)
    finally:
        os.sched_setaffinity(0, allowed)


def test_machine_capacity_counts_the_gpus_cuda_may_use():
    assert capacity_in_a_fresh_process().gpus == gpus_listed_by_the_driver()
    assert capacity_in_a_fresh_process(CUDA_VISIBLE_DEVICES="").gpus == 0
    assert capacity_in_a_fresh_process(DS_ACCELERATOR="cpu").gpus == 0  # DeepSpeed told to ignore GPUs
    if gpus_listed_by_the_driver() > 0:
        assert capacity_in_a_fresh_process(CUDA_VISIBLE_DEVICES="0").gpus == 1
