"""Tiny synthetic datasets shared by the data_pipelines tests (written once per session)."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from data_pipelines import synth_cityscapes, synth_imagenet, write_cityscapes_shards, write_imagenet_shards

CLASSES = 4
TRAIN_PER_CLASS = 8  # 32 train samples
VAL_PER_CLASS = 3  # 12 val samples
SIZE = 16


@pytest.fixture(scope="session")
def imagenet_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imagenet_raw")
    synth_imagenet(root, classes=CLASSES, train_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, size=SIZE)
    return root


@pytest.fixture(scope="session")
def imagenet_shards(imagenet_raw, tmp_path_factory) -> dict[str, Path]:
    """8 train shards of 4 samples (balanced over 2 ranks x 2 workers) and 3 val shards of 4."""
    out = tmp_path_factory.mktemp("imagenet_shards")
    write_imagenet_shards(imagenet_raw, out / "train", split="train", samples_per_shard=4, workers=2, progress=False)
    write_imagenet_shards(imagenet_raw, out / "val", split="val", samples_per_shard=4, progress=False)
    return {"train": out / "train", "val": out / "val"}


@pytest.fixture(scope="session")
def cityscapes_raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cityscapes_raw")
    synth_cityscapes(root, train=4, val=2, size=(64, 32))
    return root


def class_of_key(key: str) -> int:
    """Synthetic train keys are '<wnid>_<i>' with wnid 'n%08d' = class id."""
    return int(key.split("_")[0][1:])


def epoch_keys(stream, label_of=None) -> Counter:
    """The sample keys of one epoch of ``stream`` (built ``with_keys=True``), counted; with
    ``label_of``, every target must equal ``label_of(key)``."""
    seen: Counter = Counter()
    batches = iter(stream)
    for _ in range(stream.steps_per_epoch):
        _, targets, keys = next(batches)
        if label_of is not None:
            assert targets.tolist() == [label_of(k) for k in keys]
        seen.update(keys)
    return seen


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar with exactly these members, in this order."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="session")
def cityscapes_shards(cityscapes_raw, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("cityscapes_shards")
    write_cityscapes_shards(cityscapes_raw, out / "train", split="train", samples_per_shard=1, progress=False)
    write_cityscapes_shards(cityscapes_raw, out / "val", split="val", samples_per_shard=1, progress=False)
    return {"train": out / "train", "val": out / "val"}
