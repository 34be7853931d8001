"""Bad input: each case gets its specified behaviour and one clear message."""

from __future__ import annotations

import csv
import io
import os
import pickle
import shutil

import pytest
from PIL import Image

from data_pipelines import (
    DataError,
    build_train_stream,
    check_readers,
    synth_imagenet,
    write_imagenet_shards,
)
from data_pipelines.shards.index import INDEX_FORMAT
from tests.data_pipelines.conftest import epoch_keys, write_tar


def _jpeg(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _keys_of_epoch(spec, **kwargs):
    stream = build_train_stream("imagenet", str(spec), seed=0, image_size=16, with_keys=True, **kwargs)
    return stream, epoch_keys(stream)


@pytest.fixture
def raw_with_corrupt_jpeg(imagenet_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(imagenet_raw, raw)
    victim = raw / "train/n00000002/n00000002_3.JPEG"
    victim.write_bytes(victim.read_bytes()[:40] + b"\x00garbage" * 20)  # header intact, data broken
    return raw


@pytest.mark.timeout(60)
def test_corrupt_jpeg_is_skipped_counted_and_replaced(raw_with_corrupt_jpeg, tmp_path):
    write_imagenet_shards(raw_with_corrupt_jpeg, tmp_path / "shards", split="train", samples_per_shard=8,
                          progress=False)
    stream, keys = _keys_of_epoch(tmp_path / "shards", batch_size=4, workers=2, rank=0, world_size=1,
                                  max_bad_fraction=0.5)
    assert stream.bad_samples == 1
    assert "n00000002_3" not in keys
    assert sum(keys.values()) == 32  # full batches: the bad sample's place went to another one


@pytest.mark.timeout(60)
def test_bad_fraction_above_the_limit_stops_with_a_clear_message(raw_with_corrupt_jpeg, tmp_path):
    write_imagenet_shards(raw_with_corrupt_jpeg, tmp_path / "shards", split="train", samples_per_shard=8,
                          progress=False)
    with pytest.raises(DataError, match=r"1 bad samples in \d+ .*max_bad_fraction=0.0"):
        _keys_of_epoch(tmp_path / "shards", batch_size=4, workers=2, rank=0, world_size=1, max_bad_fraction=0.0)


@pytest.mark.timeout(60)
def test_truncated_tar_keeps_its_first_samples_and_counts_the_rest(imagenet_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(imagenet_shards["train"], shards)
    victim = shards / "train-000003.tar"
    victim.write_bytes(victim.read_bytes()[:3000])  # cut inside the second sample's image
    stream, keys = _keys_of_epoch(shards, batch_size=4, workers=2, rank=0, world_size=1, max_bad_fraction=0.5)
    assert stream.bad_samples == 3  # 4 in the index, 1 readable before the cut
    assert sum(keys.values()) == 32 and len(keys) == 29


@pytest.mark.timeout(60)
def test_unreadable_shard_is_retried_then_reported(imagenet_shards, tmp_path, caplog):
    shards = tmp_path / "shards"
    shutil.copytree(imagenet_shards["train"], shards)
    (shards / "train-000005.tar").unlink()
    stream, keys = _keys_of_epoch(shards, batch_size=4, workers=0, rank=0, world_size=1, max_bad_fraction=0.5)
    assert stream.bad_samples == 4 and len(keys) == 28
    assert "train-000005.tar" in caplog.text and "after 3 attempts" in caplog.text


class _CreatesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling calls open(path, "w"): the file appears


@pytest.mark.timeout(60)
def test_pickle_members_are_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled.txt"
    payload = pickle.dumps(_CreatesFileWhenUnpickled(str(marker)))
    probe = tmp_path / "probe.txt"  # the payload really is dangerous: unpickling creates a file
    pickle.loads(pickle.dumps(_CreatesFileWhenUnpickled(str(probe)))).close()
    assert probe.exists()

    shards = tmp_path / "shards"
    shards.mkdir()
    for n in range(2):  # community layout (no index): jpg + cls, plus pickle fields webdataset would decode
        members = []
        for i in range(4):
            key = f"s{n}_{i}"
            members += [(f"{key}.jpg", _jpeg()), (f"{key}.cls", b"1"), (f"{key}.pyd", payload)]
        members += [("evil_0.pickle", payload), ("evil_0.cls", b"0")]  # no image: a bad sample
        write_tar(shards / f"part-{n}.tar", members)
    stream, keys = _keys_of_epoch(shards, batch_size=2, workers=2, rank=0, world_size=1, max_bad_fraction=0.5)
    assert not marker.exists()
    assert stream.bad_samples >= 1 and not any(k.startswith("evil") for k in keys)


def test_empty_source_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"no images found under .*train \(expected train/<wnid>/\*\.JPEG\)"):
        write_imagenet_shards(tmp_path, tmp_path / "out", split="train", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        write_imagenet_shards(tmp_path / "nothing", tmp_path / "out", split="train", progress=False)


def test_missing_val_ground_truth_is_a_clear_error(tmp_path):
    synth_imagenet(tmp_path / "raw", classes=2, train_per_class=1, val_per_class=2, size=8)
    solution = tmp_path / "raw/LOC_val_solution.csv"
    rows = list(csv.reader(open(solution)))
    with open(solution, "w", newline="") as f:  # one image without a row
        csv.writer(f).writerows(rows[:-1])
    with pytest.raises(DataError, match="1 val images have no row in"):
        write_imagenet_shards(tmp_path / "raw", tmp_path / "out", split="val", progress=False)
    os.remove(solution)
    with pytest.raises(DataError, match="no LOC_val_solution.csv was found.*--val-labels"):
        write_imagenet_shards(tmp_path / "raw", tmp_path / "out", split="val", progress=False)


def test_layouts_the_canonical_streams_cannot_serve_are_clear_errors(imagenet_shards):
    spec = str(imagenet_shards["val"])  # 3 shards: fewer than readers is fine, streams take sample ranges
    assert len(check_readers(spec, world_size=2, workers=2, batch_size=1).urls) == 3
    with pytest.raises(DataError, match=r"3 processes cannot share 4 canonical streams evenly: run a number of "
                                        r"processes that divides 4"):
        check_readers(spec, world_size=3, workers=0, batch_size=1, global_batch=12, streams=4)
    with pytest.raises(DataError, match=r"data.streams=5 does not divide the global batch 12"):
        check_readers(spec, world_size=1, workers=0, batch_size=1, global_batch=12, streams=5)
    with pytest.raises(DataError, match=r"global batch 12 over 2 processes is 6 samples per process, which "
                                        r"micro-batches of 4 do not fill"):
        check_readers(spec, world_size=2, workers=0, batch_size=4, global_batch=12)
    # more workers than the rank's streams: only as many start as have a stream to read
    assert build_train_stream("imagenet", spec, batch_size=1, workers=3, rank=0, world_size=2, seed=0,
                              image_size=16, global_batch=4).layout.workers == 2
    with pytest.raises(DataError, match=r"holds 12 samples, fewer than one global batch \(16\)"):
        build_train_stream("imagenet", spec, batch_size=8, workers=0, rank=0, world_size=2, seed=0, image_size=16)


def test_missing_or_foreign_shards_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        check_readers(str(tmp_path / "nope"), 1, 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no shards"):
        check_readers(str(tmp_path / "empty"), 1, 1)
    with pytest.raises(DataError, match="do not exist"):
        check_readers(str(tmp_path / "x-{0..3}.tar"), 1, 1)
    (tmp_path / "index.json").write_text('{"format": "other"}')
    with pytest.raises(DataError, match=f"not an index written by `mdeq shards`.*{INDEX_FORMAT[:0]}"):
        check_readers(str(tmp_path / "index.json"), 1, 1)


def test_bad_crop_scale_is_a_clear_error(imagenet_shards):
    with pytest.raises(DataError, match=r"data.crop_scale must be \[low, high\]"):
        build_train_stream("imagenet", str(imagenet_shards["train"]), batch_size=1, workers=0, rank=0, world_size=1,
                           seed=0, image_size=16, crop_scale=(0.5, 2.0))
