"""The sample order does not depend on the layout: a run consumed as 2 ranks x 2 workers, resumed as
1 x 1 and then 2 x 1, uses every sample of the epoch once, in the uninterrupted run's global batches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_pipelines import build_train_stream, synth_imagenet, write_imagenet_shards

SAMPLES = 96  # 4 classes x 24, in shards of 10: nine of 10 samples and one of 6
GLOBAL_BATCH, MICRO = 8, 4  # 12 global batches per epoch
STEPS = SAMPLES // GLOBAL_BATCH


@pytest.fixture(scope="module")
def unequal_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic_order")
    synth_imagenet(root / "raw", classes=4, train_per_class=SAMPLES // 4, val_per_class=1, size=16)
    shard_set = write_imagenet_shards(root / "raw", root / "train", split="train", samples_per_shard=10,
                                      progress=False)
    assert sorted(shard_set.counts) == [6] + [10] * 9
    return root / "train"


def run(shards: Path, *, world: int, workers: int, global_batches: int, state: dict | None = None):
    """``global_batches`` global batches read by ``world`` ranks (one stream each, as the trainer builds
    them): the batches as sets of keys, each key's augmented image, and rank 0's state afterwards."""
    streams = [build_train_stream("imagenet", str(shards), batch_size=MICRO, workers=workers, rank=rank,
                                  world_size=world, seed=5, image_size=16, shuffle_buffer=24, with_keys=True,
                                  global_batch=GLOBAL_BATCH) for rank in range(world)]
    for stream in streams:
        if state is not None:
            stream.load_state_dict(json.loads(json.dumps(state)))  # what a checkpoint stores: JSON
    iterators = [iter(stream) for stream in streams]
    batches, images = [], {}
    for _ in range(global_batches):
        keys: list[str] = []
        for it, stream in zip(iterators, streams):
            for _ in range(stream.layout.micro_steps):  # gradient accumulation adapts to the world size
                batch_images, _, batch_keys = next(it)
                assert batch_images.shape[0] == MICRO
                keys += batch_keys
                images.update(zip(batch_keys, batch_images))
        assert len(keys) == GLOBAL_BATCH
        batches.append(frozenset(keys))
    states = [stream.state_dict() for stream in streams]
    # the state is layout-free: every rank would write the same position
    assert all({k: v for k, v in s.items() if k != "bad_samples"} ==
               {k: v for k, v in states[0].items() if k != "bad_samples"} for s in states)
    return batches, images, states[0]


@pytest.fixture(scope="module")
def uninterrupted(unequal_shards):
    return run(unequal_shards, world=2, workers=2, global_batches=2 * STEPS)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("first", [5, STEPS], ids=["mid-epoch", "epoch-boundary"])
def test_resumes_on_other_layouts_repeat_and_skip_nothing(unequal_shards, uninterrupted, first):
    expected, expected_images, _ = uninterrupted
    part1, images1, state = run(unequal_shards, world=2, workers=2, global_batches=first)
    assert state["epoch"] * STEPS + state["global_step_in_epoch"] == first
    part2, images2, state = run(unequal_shards, world=1, workers=0, global_batches=3, state=state)
    part3, images3, state = run(unequal_shards, world=2, workers=1, global_batches=2 * STEPS - first - 3,
                                state=state)
    got = part1 + part2 + part3
    assert got == expected  # the same global batches, in the same order
    for epoch in range(2):
        keys = Counter(k for batch in got[epoch * STEPS:(epoch + 1) * STEPS] for k in batch)
        assert len(keys) == SAMPLES and set(keys.values()) == {1}, f"epoch {epoch}: repeated or missed samples"
    # each sample is augmented the same way whatever layout read it
    for key, image in {**images1, **images2, **images3}.items():
        assert torch.equal(image, expected_images[key]), key
    assert state["epoch"] == 2 and state["global_step_in_epoch"] == 0


@pytest.mark.timeout(120)
def test_the_global_batches_change_between_epochs(uninterrupted):
    batches, _, _ = uninterrupted
    assert not set(batches[:STEPS]) & set(batches[STEPS:])
