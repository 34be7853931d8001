"""The elastic form's command line and checks: what torchrun is told, and what is refused before start."""

from __future__ import annotations

import shlex
import socket

from launch.cli.main import main

SCRIPT_ARGS = ["--script", __file__]


def test_dry_run_is_a_c10d_rendezvous_with_a_store_per_round(capsys):
    assert main(["launch", "torchrun", "--nnodes", "1:3", "--rdzv-endpoint", "127.0.0.1:29411", "--local-addr",
                 "127.0.0.1", "--dry-run", *SCRIPT_ARGS]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1" in lines
    command = shlex.split(lines[-1])
    pairs = dict(zip(command, command[1:]))
    assert pairs["--nnodes"] == "1:3" and pairs["--rdzv-backend"] == "c10d"
    assert pairs["--rdzv-endpoint"] == "127.0.0.1:29411" and pairs["--local-addr"] == "127.0.0.1"
    assert "is_host=true" in pairs["--rdzv-conf"]  # 127.0.0.1 is this host: it keeps the store
    assert pairs["--max-restarts"] == "3"  # a lost node costs the survivors one restart
    assert "--node-rank" not in command and "--master-addr" not in command


def test_elastic_and_static_arguments_are_not_mixed(capsys):
    assert main(["launch", "torchrun", "--nnodes", "1:2", "--dry-run", *SCRIPT_ARGS]) == 2
    assert "give the rendezvous store with --rdzv-endpoint HOST:PORT" in capsys.readouterr().err
    assert main(["launch", "torchrun", "--nnodes", "1:2", "--rdzv-endpoint", "127.0.0.1:29411", "--node-rank", "0",
                 *SCRIPT_ARGS]) == 2
    assert "--node-rank and --master-addr belong to the static form" in capsys.readouterr().err
    assert main(["launch", "torchrun", "--nnodes", "3:2", "--rdzv-endpoint", "127.0.0.1:29411", *SCRIPT_ARGS]) == 2
    assert "--nnodes must be N or MIN:MAX with 1 <= MIN <= MAX" in capsys.readouterr().err


def test_every_world_size_of_the_range_must_hold_the_global_batch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text("data: {batch_size: 4}\ntrain: {global_batch_size: 8}\ncheckpoint: {dir: ckpt}\n")
    # 1 or 2 nodes of 1 process: 8 = 1 x 2 x 4 = 2 x 1 x 4, fine; 3 nodes cannot split 8
    with socket.socket() as sock:  # this host keeps the store: its port must be free
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code = main(["launch", "torchrun", "--nnodes", "1:3", "--rdzv-endpoint", f"127.0.0.1:{port}", "--", "train",
                 "--config", "c.yaml"])
    err = capsys.readouterr().err
    assert code == 2
    assert "this elastic job may run on 1, 2, 3 processes, but on 3: train.global_batch_size=8 cannot be split " \
           "over 3 processes" in err and "Set train.global_batch_size to a multiple of 24" in err, err
