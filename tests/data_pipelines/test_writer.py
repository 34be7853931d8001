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


def _slow_sample(item: int) -> tuple[str, dict[str, bytes]]:
    import time

    time.sleep(0.02)  # slow enough to be killed mid-run
    return f"s{item:04d}", {"cls": str(item % 3).encode(), "txt": b"x" * (item * 37 % 500)}


def _write_slowly(out: str) -> None:
    from data_pipelines.shards.writer import write_shards

    write_shards(out, split="train", items=list(range(120)), make_sample=_slow_sample, samples_per_shard=10,
                 workers=1, dataset="imagenet", progress=False)


@pytest.mark.timeout(120)
def test_writer_killed_with_sigkill_resumes_to_the_same_shards(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    code = f"from tests.data_pipelines.test_writer import _write_slowly; _write_slowly({str(tmp_path / 'a')!r})"
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd())
    progress = tmp_path / "a" / ".progress"
    deadline = time.time() + 60
    while time.time() < deadline and len(list(progress.glob("*.json")) if progress.exists() else []) < 3:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    done = sorted(p.name for p in (tmp_path / "a").glob("train-*.tar"))
    assert 3 <= len(done) < 12 and not (tmp_path / "a" / "index.json").exists()  # killed mid-run
    _write_slowly(str(tmp_path / "a"))  # the re-run
    _write_slowly(str(tmp_path / "b"))  # a run that was never interrupted
    index_a = json.loads((tmp_path / "a" / "index.json").read_text())
    index_b = json.loads((tmp_path / "b" / "index.json").read_text())
    assert index_a == index_b and len(index_a["shards"]) == 12
    assert not list((tmp_path / "a").glob(".*.partial-*"))
