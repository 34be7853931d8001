"""`mdeq shards cityscapes` with an unreadable camera image: the same clear error naming the file,
whether the image is the first of the split or sits in the middle, with one writer or several."""

from __future__ import annotations

import shutil

import pytest

from launch.cli.main import main


@pytest.mark.parametrize("position,workers", [(0, 1), (-1, 1), (-1, 2)])
def test_unreadable_image_is_named_wherever_it_sits(cityscapes_raw, tmp_path, capsys, position, workers):
    raw = tmp_path / "raw"
    shutil.copytree(cityscapes_raw, raw)
    images = sorted((raw / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
    victim = images[position]
    victim.write_bytes(victim.read_bytes()[:200])  # a truncated download
    code = main(["shards", "cityscapes", "--src", str(raw), "--out", str(tmp_path / "out"), "--split", "train",
                 "--samples-per-shard", "1", "--workers", str(workers), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"cannot read image {victim}" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "index.json").exists()  # nothing half-indexed


def test_image_and_labels_of_different_sizes(cityscapes_raw, tmp_path, capsys):
    from PIL import Image

    raw = tmp_path / "raw"
    shutil.copytree(cityscapes_raw, raw)
    victim = sorted((raw / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))[-1]
    Image.open(victim).resize((32, 16)).save(victim)
    code = main(["shards", "cityscapes", "--src", str(raw), "--out", str(tmp_path / "out"), "--split", "val",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(victim) in err and "must be the same size" in err
