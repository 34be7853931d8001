"""`mdeq launch k8s --dry-run` as a cluster user needs it: checkpoints, MLflow and logs on storage
that outlives the pods (refused or warned), plain YAML without anchors, no paths of this machine."""

from __future__ import annotations

import yaml

from launch.cli.main import main

BASE = ["launch", "k8s", "--image", "reg/mdeq:1", "--dry-run"]
TRAIN = ["--", "train", "--config", "configs/quickstart.yaml"]


def test_checkpoints_on_pod_storage_with_several_pods_are_refused(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert main([*BASE, "--nodes", "2", "--volume", "data:/data", *TRAIN]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.dir (/workspace/runs/quickstart/checkpoints)" in err and "--volume" in err


def test_single_pod_and_mlflow_and_logs_on_pod_storage_are_warned(capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main([*BASE, "--nodes", "1", *TRAIN, "--set", "tracking.uri=sqlite:///runs/mlflow.db"]) == 0
    err = capsys.readouterr().err
    assert "warning: checkpoint.dir" in err and "warning: the MLflow store (sqlite:///runs/mlflow.db)" in err
    assert "warning: --log-dir (/workspace/runs/logs)" in err


def test_shared_volume_silences_the_checks(capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert main([*BASE, "--nodes", "3", "--volume", "runs:/workspace/runs", *TRAIN]) == 0
    assert "warning" not in capsys.readouterr().err


def test_manifest_has_no_anchors_and_no_paths_of_this_machine(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "eth0")
    assert main([*BASE, "--nodes", "3", "--volume", "runs:/workspace/runs", "--env", "HF_HOME=/cache/hf",
                 *TRAIN]) == 0
    captured = capsys.readouterr()
    assert "&id" not in captured.out and "*id" not in captured.out
    assert str(tmp_path) not in captured.out
    assert "not forwarding MLFLOW_TRACKING_URI" in captured.err and "not forwarding TORCH_EXTENSIONS_DIR" in captured.err
    manifest = yaml.safe_load(captured.out.split("\n", 1)[1])
    for role in ("Master", "Worker"):
        env = {e["name"]: e["value"] for e in manifest["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
               ["containers"][0]["env"]}
        assert env["GLOO_SOCKET_IFNAME"] == "eth0" and env["HF_HOME"] == "/cache/hf"  # explicit paths stay
        assert "MLFLOW_TRACKING_URI" not in env and "TORCH_EXTENSIONS_DIR" not in env
