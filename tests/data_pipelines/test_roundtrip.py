"""Raw layout -> shards -> loader: every sample once per epoch across 2 ranks x 2 workers, right labels."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from data_pipelines import build_eval_loader, build_train_stream, read_shard_set
from tests.data_pipelines.conftest import CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS, class_of_key

WORLD, WORKERS, BATCH = 2, 2, 2


def _epoch_keys(shards, epoch_count: int) -> list[list[tuple[str, int]]]:
    """Per epoch, the (key, label) pairs both ranks yielded."""
    epochs: list[list] = [[] for _ in range(epoch_count)]
    for rank in range(WORLD):
        stream = build_train_stream("imagenet", str(shards), batch_size=BATCH, workers=WORKERS, rank=rank,
                                    world_size=WORLD, seed=3, image_size=16, shuffle_buffer=4, with_keys=True)
        batches = iter(stream)
        for epoch in range(epoch_count):
            for _ in range(stream.steps_per_epoch):
                images, targets, keys = next(batches)
                assert images.shape == (BATCH, 3, 16, 16) and targets.shape == (BATCH,)
                epochs[epoch] += list(zip(keys, targets.tolist()))
            assert stream.epoch == epoch + 1 and stream.step_in_epoch == 0
    return epochs


@pytest.mark.timeout(120)
def test_every_train_sample_exactly_once_per_epoch_across_ranks_and_workers(imagenet_shards):
    shard_set = read_shard_set(str(imagenet_shards["train"]))
    assert shard_set.num_classes == CLASSES and shard_set.total_samples == CLASSES * TRAIN_PER_CLASS
    epochs = _epoch_keys(imagenet_shards["train"], 2)
    for pairs in epochs:
        keys = Counter(key for key, _ in pairs)
        assert len(keys) == CLASSES * TRAIN_PER_CLASS and set(keys.values()) == {1}
        assert all(label == class_of_key(key) for key, label in pairs)
    assert [k for k, _ in epochs[0]] != [k for k, _ in epochs[1]], "the order must change between epochs"


@pytest.mark.timeout(60)
def test_class_map_and_index_written_beside_shards(imagenet_shards):
    train = imagenet_shards["train"]
    index = json.loads((train / "index.json").read_text())
    classes = (train / "classes.txt").read_text().split()
    assert classes == sorted(classes) == index["classes"] and len(classes) == CLASSES
    assert sum(s["samples"] for s in index["shards"]) == index["samples"] == CLASSES * TRAIN_PER_CLASS
    assert all(len(s["sha256"]) == 64 for s in index["shards"])


@pytest.mark.timeout(60)
# 3 val shards: one shard group per reader (2x0), per rank (2x2), one group for all readers (4x1)
@pytest.mark.parametrize("world,workers", [(2, 0), (2, 2), (4, 1)])
def test_eval_sees_every_val_sample_once_with_equal_batches_per_rank(imagenet_shards, imagenet_raw, world, workers):
    import csv

    truth = {row["ImageId"]: row["PredictionString"].split()[0]
             for row in csv.DictReader(open(imagenet_raw / "LOC_val_solution.csv"))}
    classes = read_shard_set(str(imagenet_shards["val"])).classes
    lengths, labels, real, padded = [], Counter(), 0, 0
    for rank in range(world):
        loader = build_eval_loader("imagenet", str(imagenet_shards["val"]), batch_size=BATCH, workers=workers,
                                   rank=rank, world_size=world, image_size=16, eval_resize=18)
        batches = list(loader)
        lengths.append(len(batches))
        assert len(batches) == len(loader)
        for images, targets in batches:
            assert images.shape[1:] == (3, 16, 16)
            labels.update(t for t in targets.tolist() if t != -1)
            real += sum(t != -1 for t in targets.tolist())
            padded += sum(t == -1 for t in targets.tolist())
    assert len(set(lengths)) == 1
    assert real == CLASSES * VAL_PER_CLASS
    if workers == 0:  # 3 shards of 4 over 2 readers: 8 vs 4 samples, rank 1 gets 2 padding batches
        assert lengths == [4, 4] and padded == 4
    expected = Counter(classes.index(wnid) for wnid in truth.values())
    assert labels == expected
