"""``--dry-run`` prints the exact commands each form would run, with the forwarded environment."""

from __future__ import annotations

import shlex
import sys

import pytest

from launch.cli.main import main
from launch.environment import deepspeed_env_file_text, is_propagated, launch_environment, parse_assignments
from launch.errors import LaunchError


def dry_run(capsys, monkeypatch, *argv: str, env: dict[str, str] | None = None) -> list[str]:
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    assert main(["launch", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def command_of(lines: list[str]) -> list[str]:
    return shlex.split([line for line in lines if line and not line.startswith(("#", "export "))][-1])


def test_propagated_variables_are_the_tracking_network_and_project_ones():
    source = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "GLOO_SOCKET_IFNAME": "eth1",
              "NCCL_SOCKET_IFNAME": "ib0", "MDEQ_X": "1", "HOME": "/root", "PATH": "/bin", "SECRET_TOKEN": "x"}
    env = launch_environment({"EXTRA": "2"}, source=source)
    assert env == {"GLOO_SOCKET_IFNAME": "eth1", "MDEQ_X": "1", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                   "NCCL_SOCKET_IFNAME": "ib0", "EXTRA": "2", "PYTHONUNBUFFERED": "1"}
    assert not is_propagated("GLOO") and is_propagated("TP_SOCKET_IFNAME")


def test_env_assignments_are_checked():
    assert parse_assignments(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(LaunchError, match="NAME=VALUE"):
        parse_assignments(["no-equals"])
    with pytest.raises(LaunchError, match="newline"):
        deepspeed_env_file_text({"A": "1\n2"})


def test_local_is_standalone_torchrun_with_restarts(capsys, monkeypatch):
    lines = dry_run(capsys, monkeypatch, "local", "--nproc", "2", "--max-restarts", "2", "--dry-run", "--",
                    "train", "--config", "configs/quickstart.yaml", env={"MLFLOW_TRACKING_URI": "sqlite:////x.db"})
    cmd = command_of(lines)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("--max-restarts") + 1] == "2"
    assert cmd[cmd.index("-m", 3) + 1] == "launch.worker"
    assert cmd[-4:] == ["--", "train", "--config", "configs/quickstart.yaml"]
    assert "export MLFLOW_TRACKING_URI=sqlite:////x.db" in lines


def test_torchrun_node_is_static_rendezvous(capsys, monkeypatch):
    lines = dry_run(capsys, monkeypatch, "torchrun", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
                    "--master-port", "29400", "--nproc-per-node", "1", "--env", "GLOO_SOCKET_IFNAME=eth9",
                    "--dry-run", "--", "train", "--config", "configs/quickstart.yaml")
    cmd = command_of(lines)
    for flag, value in [("--nnodes", "2"), ("--node-rank", "1"), ("--master-addr", "10.0.0.1"),
                        ("--master-port", "29400")]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--standalone" not in cmd and not any("rdzv" in part for part in cmd)
    assert "SIGUSR1" in cmd[cmd.index("--signals-to-handle") + 1]
    assert "export GLOO_SOCKET_IFNAME=eth9" in lines


def test_deepspeed_form_has_what_cpu_hosts_need(capsys, monkeypatch, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=2\nnode-b slots=2\n")
    monkeypatch.setattr("launch.preflight.machine_capacity",
                        lambda: __import__("launch.preflight").preflight.MachineCapacity(gpus=0, cpu_cores=2))
    lines = dry_run(capsys, monkeypatch, "deepspeed", "--hostfile", str(hostfile), "--no-ssh", "--node-rank", "1",
                    "--log-dir", str(tmp_path / "logs"), "--dry-run", "--", "train", "--config",
                    "configs/quickstart.yaml", env={"GLOO_SOCKET_IFNAME": "eth1"})
    cmd = command_of(lines)
    assert cmd[1:3] == ["-m", "deepspeed.launcher.runner"]
    assert cmd[cmd.index("--num_accelerators") + 1] == "2"  # one process per slot on CPU
    assert cmd[cmd.index("--master_addr") + 1] == "node-a"
    assert cmd[cmd.index("--node_rank") + 1] == "1" and "--no_ssh" in cmd and "--no_local_rank" in cmd
    assert f"export DS_ENV_FILE={tmp_path / 'logs' / '.deepspeed_env'}" in lines
    assert "#   GLOO_SOCKET_IFNAME=eth1" in lines  # forwarded to remote hosts through the env file


def test_deepspeed_no_ssh_needs_node_rank(capsys, tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("node-a slots=1\n")
    assert main(["launch", "deepspeed", "--hostfile", str(hostfile), "--no-ssh", "--dry-run", "--", "train"]) == 2
    assert "--node-rank" in capsys.readouterr().err


def test_k8s_manifest_is_a_pytorchjob(capsys, monkeypatch):
    import yaml

    lines = dry_run(capsys, monkeypatch, "k8s", "--nodes", "3", "--gpus-per-node", "8", "--image", "reg/mdeq:1",
                    "--volume", "runs:/workspace/runs", "--dry-run", "--", "train", "--config",
                    "configs/quickstart.yaml", env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    manifest = yaml.safe_load("\n".join(lines))
    assert manifest["kind"] == "PyTorchJob"
    specs = manifest["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] == 2
    container = specs["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == "reg/mdeq:1"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in container["env"]
    script = container["command"][-1]
    assert "--nproc-per-node 8" in script and "train --config configs/quickstart.yaml" in script
