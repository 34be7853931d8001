"""``mdeq synth`` and ``mdeq shards`` from the command line; user errors exit 2 with one message."""

from __future__ import annotations

import json

from launch.cli.main import main


def test_synth_then_shards_from_the_command_line(tmp_path, capsys):
    assert main(["synth", "imagenet", "--out", str(tmp_path / "raw"), "--classes", "2", "--train-per-class", "3",
                 "--val-per-class", "1", "--size", "12"]) == 0
    assert main(["shards", "imagenet", "--src", str(tmp_path / "raw"), "--out", str(tmp_path / "train"),
                 "--split", "train", "--samples-per-shard", "2", "--no-progress"]) == 0
    assert json.loads((tmp_path / "train/index.json").read_text())["samples"] == 6
    assert main(["synth", "cityscapes", "--out", str(tmp_path / "cs"), "--train", "2", "--val", "1",
                 "--size", "64x32"]) == 0
    assert main(["shards", "cityscapes", "--src", str(tmp_path / "cs"), "--out", str(tmp_path / "cs_val"),
                 "--split", "val", "--no-progress"]) == 0
    assert "1 shards, 1 samples" in capsys.readouterr().out


def test_user_errors_exit_2_with_one_message(tmp_path, capsys):
    (tmp_path / "train").mkdir()
    assert main(["shards", "imagenet", "--src", str(tmp_path), "--out", str(tmp_path / "o"), "--split", "train",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdeq shards: error: no images found") and "Traceback" not in err
