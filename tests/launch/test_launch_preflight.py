"""Every launch mistake ends before any process starts, in exit code 2 and one message saying what to do."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from launch.cli.main import main
from launch.errors import LaunchError
from launch.preflight import (
    MachineCapacity,
    check_master_reachable,
    check_nproc,
    check_port_free,
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


def test_port_free_passes_and_time_wait_is_not_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    check_port_free(port)


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


def test_fewer_shards_than_ranks_times_workers(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_shards(tmp_path / "shards", 3)
    (tmp_path / "c.yaml").write_text("data: {train_shards: shards, workers: 2}\n"
                                     "checkpoint: {dir: ckpt}\n")
    code, err = run_mdeq(capsys, "launch", "torchrun", "--nnodes", "2", "--node-rank", "1", "--master-addr",
                         "127.0.0.1", "--master-port", "1", "--", "train", "--config", "c.yaml")
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "3 shards" in lines[0] and "4 readers" in lines[0], err


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


def test_machine_capacity_counts_what_torch_sees(monkeypatch):
    import os

    import torch

    from launch.preflight import machine_capacity

    expected = torch.cuda.device_count() if torch.cuda.is_available() else 0
    capacity = machine_capacity()
    assert capacity.gpus == expected and capacity.cpu_cores == len(os.sched_getaffinity(0))
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")  # DeepSpeed told to ignore GPUs: cores count
    assert machine_capacity().gpus == 0
