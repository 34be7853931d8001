"""Shards in the community layout (webdataset's own writer, jpg + cls, no index) are read as they are."""

from __future__ import annotations

import io

import pytest
import webdataset
from PIL import Image

from data_pipelines import build_eval_loader, build_train_stream, num_classes_of, read_shard_set
from tests.data_pipelines.conftest import epoch_keys


@pytest.mark.timeout(60)
def test_shards_written_by_webdataset_are_streamed_without_conversion(tmp_path):
    for shard in range(4):
        with webdataset.TarWriter(str(tmp_path / f"imagenet-1k-train-{shard:04d}.tar")) as sink:
            for i in range(3):
                buffer = io.BytesIO()
                Image.new("RGB", (20, 14), (40 * i, 90, 200)).save(buffer, format="JPEG")
                sink.write({"__key__": f"s{shard}_{i}", "jpg": buffer.getvalue(), "cls": shard,
                            "json": {"label": shard}})
    spec = str(tmp_path / "imagenet-1k-train-{0000..0003}.tar")
    shard_set = read_shard_set(spec).with_counts()
    assert shard_set.counts == [3, 3, 3, 3] and num_classes_of(spec) is None
    stream = build_train_stream("imagenet", spec, batch_size=3, workers=2, rank=0, world_size=1, seed=0,
                                image_size=16, with_keys=True)
    seen = epoch_keys(stream, lambda key: int(key[1]))
    assert len(seen) == 12 and set(seen.values()) == {1}
    loader = build_eval_loader("imagenet", str(tmp_path), batch_size=5, workers=0, rank=0, world_size=1,
                               image_size=16)
    assert sum(int((t >= 0).sum()) for _, t in loader) == 12


def test_index_for_foreign_shards_is_written_once_and_read_as_the_spec(tmp_path):
    from launch.cli.main import main

    shards = tmp_path / "release"
    shards.mkdir()
    for shard in range(2):
        with webdataset.TarWriter(str(shards / f"part-{shard}.tar")) as sink:
            for i in range(shard + 2):
                sink.write({"__key__": f"s{shard}_{i}", "jpg": b"not decoded here", "cls": 1})
    index = tmp_path / "elsewhere" / "release-index.json"
    index.parent.mkdir()
    assert main(["shards", "index", "--shards", str(shards / "part-{0..1}.tar"), "--out", str(index),
                 "--num-classes", "1000"]) == 0
    shard_set = read_shard_set(str(index))
    assert shard_set.counts == [2, 3] and shard_set.urls == [str(shards / "part-0.tar"), str(shards / "part-1.tar")]
    assert num_classes_of(str(index)) == 1000
