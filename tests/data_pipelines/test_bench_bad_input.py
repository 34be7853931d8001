"""`mdeq bench loader` on too little data: one message naming the flags to change, or (for --prepare)
shards cut so that every loader worker has one."""

from __future__ import annotations

import json

import pytest

from launch.cli.main import main


def test_fewer_images_than_the_batches_asked(imagenet_raw, imagenet_shards, capsys):
    code = main(["bench", "loader", "--src", str(imagenet_raw), "--shards", str(imagenet_shards["train"]),
                 "--batch-size", "16", "--batches", "5", "--warmup", "1", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "holds 32 images" in err and "need 96" in err and "Traceback" not in err


def test_fewer_shards_than_workers(imagenet_raw, imagenet_shards, capsys):
    code = main(["bench", "loader", "--src", str(imagenet_raw), "--shards", str(imagenet_shards["val"]),
                 "--batch-size", "2", "--batches", "1", "--warmup", "0", "--workers", "4"])
    err = capsys.readouterr().err
    assert code == 2 and "--workers 4" in err, err


@pytest.mark.timeout(600)
def test_prepare_writes_a_shard_per_worker(tmp_path, capsys):
    code = main(["bench", "loader", "--src", str(tmp_path / "raw"), "--shards", str(tmp_path / "shards"),
                 "--prepare", "8", "--classes", "2", "--workers", "2", "--batch-size", "2", "--batches", "1",
                 "--warmup", "0", "--repeats", "1", "--image-size", "32", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    figures = json.loads(captured.out)
    assert figures["images_per_s"] > 0 and figures["workers"] == 2
    assert len(list((tmp_path / "shards").glob("*.tar"))) >= 2
