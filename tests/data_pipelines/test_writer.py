"""Shard writing is crash-safe and restartable, and its index is exact."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

import pytest

from data_pipelines import read_shard_set, write_imagenet_shards


@pytest.mark.timeout(60)
def test_rerun_after_a_crash_rewrites_only_missing_shards(imagenet_raw, tmp_path):
    out = tmp_path / "shards"
    write_imagenet_shards(imagenet_raw, out, split="train", samples_per_shard=5, workers=2, progress=False)
    first_index = json.loads((out / "index.json").read_text())
    # a crash: one shard was never renamed (only its partial exists), the index was never written
    (out / "index.json").unlink()
    (out / "train-000002.tar").rename(out / ".train-000002.tar.partial-4242")
    (out / ".progress/train-000002.tar.json").unlink()
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.tar")}

    shard_set = write_imagenet_shards(imagenet_raw, out, split="train", samples_per_shard=5, workers=2,
                                      progress=False)
    assert json.loads((out / "index.json").read_text()) == first_index  # same shards, same bytes
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-*.tar") if p.name in kept} == kept
    assert not list(out.glob(".*.partial-*"))
    assert shard_set.counts == [5] * 6 + [2]
    for url, record in zip(shard_set.urls, first_index["shards"]):
        assert hashlib.sha256(open(url, "rb").read()).hexdigest() == record["sha256"]
        with tarfile.open(url) as archive:
            names = archive.getnames()
        assert len(names) == 3 * record["samples"]  # jpg, cls, json per sample
        assert {n.split(".", 1)[1] for n in names} == {"jpg", "cls", "json"}


def test_train_shards_mix_classes_and_val_shards_keep_the_csv_labels(imagenet_shards):
    first = read_shard_set(str(imagenet_shards["train"])).urls[0]
    with tarfile.open(first) as archive:
        classes = {archive.extractfile(m).read() for m in archive.getmembers() if m.name.endswith(".cls")}
    assert len(classes) > 1  # shuffled before sharding: no single-class shards


def test_writing_another_split_into_the_same_directory_is_refused(imagenet_raw, imagenet_shards, tmp_path):
    from data_pipelines import DataError

    with pytest.raises(DataError, match="write each split into its own directory"):
        write_imagenet_shards(imagenet_raw, imagenet_shards["train"], split="val", progress=False)
    assert os.path.exists(imagenet_shards["train"] / "index.json")


def _sample(item: int) -> tuple[str, dict[str, bytes]]:
    return f"s{item:04d}", {"cls": str(item % 3).encode(), "txt": b"x" * (item * 37 % 500)}


STOP_AT = 35  # the sixth sample of the fourth shard (10 per shard): three shards are complete by then


def _sample_or_stop(item: int) -> tuple[str, dict[str, bytes]]:
    """``_sample``, except that at ``STOP_AT`` it says so on stdout and waits to be killed there."""
    import sys

    if item == STOP_AT:
        print("stopped", flush=True)
        sys.stdin.read()  # the test holds stdin open and kills this process
    return _sample(item)


def _write(out: str, make_sample=_sample) -> None:
    from data_pipelines.shards.writer import write_shards

    write_shards(out, split="train", items=list(range(120)), make_sample=make_sample, samples_per_shard=10,
                 workers=1, dataset="imagenet", progress=False)


@pytest.mark.timeout(120)
def test_writer_killed_with_sigkill_resumes_to_the_same_shards(tmp_path):
    import signal
    import subprocess
    import sys

    code = ("from tests.data_pipelines.test_writer import _write, _sample_or_stop; "
            f"_write({str(tmp_path / 'a')!r}, _sample_or_stop)")
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "stopped\n"  # in the middle of the fourth shard
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(timeout=60) == -signal.SIGKILL
    finally:
        writer.kill()
        writer.stdin.close()
        writer.stdout.close()
        writer.wait()
    out = tmp_path / "a"
    assert sorted(p.name for p in out.glob("train-*.tar")) == [f"train-{i:06d}.tar" for i in range(3)]
    assert len(list(out.glob(".train-000003.tar.partial-*"))) == 1  # killed while writing it
    assert not (out / "index.json").exists()
    _write(str(out))  # the re-run
    _write(str(tmp_path / "b"))  # a run that was never interrupted
    index_a = json.loads((out / "index.json").read_text())
    index_b = json.loads((tmp_path / "b" / "index.json").read_text())
    assert index_a == index_b and len(index_a["shards"]) == 12
    assert not list(out.glob(".*.partial-*"))
