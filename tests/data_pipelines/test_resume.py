"""Exact resume: consume k batches, save the state, rebuild, continue == the uninterrupted run."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from data_pipelines import DataError, build_train_stream


def _stream(shards, **overrides):
    args = dict(batch_size=3, workers=2, rank=1, world_size=2, seed=11, image_size=16, shuffle_buffer=5,
                with_keys=True)
    args.update(overrides)
    return build_train_stream("imagenet", str(shards), **args)


def _take(batches, n):
    return [next(batches) for _ in range(n)]


@pytest.mark.timeout(120)
# steps_per_epoch is 5: mid-epoch at an odd step (the next batch is worker 1's) and exactly at the end
@pytest.mark.parametrize("consumed", [3, 5])
def test_resumed_stream_continues_exactly_like_an_uninterrupted_one(imagenet_shards, consumed):
    uninterrupted = _stream(imagenet_shards["train"])
    total = consumed + uninterrupted.steps_per_epoch + 2  # runs into the next epochs
    expected = _take(iter(uninterrupted), total)

    first = _stream(imagenet_shards["train"])
    _take(iter(first), consumed)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores: JSON-able
    resumed = _stream(imagenet_shards["train"])
    resumed.load_state_dict(state)
    got = _take(iter(resumed), total - consumed)

    for (images, targets, keys), (exp_images, exp_targets, exp_keys) in zip(got, expected[consumed:]):
        assert keys == exp_keys
        assert torch.equal(targets, exp_targets)
        assert torch.equal(images, exp_images)  # same augmentation too
    assert resumed.state_dict() == uninterrupted.state_dict()


@pytest.mark.timeout(120)
def test_resume_with_another_global_batch_keeps_the_epoch_and_warns(imagenet_shards, caplog):
    first = _stream(imagenet_shards["train"], world_size=2, rank=0, batch_size=2, with_keys=False)
    _take(iter(first), 4)  # 4 of 8 global batches of 4: half the epoch
    # global batch 2 instead of 4: another order, so the position is carried over as a fraction
    resumed = _stream(imagenet_shards["train"], world_size=1, rank=0, batch_size=2, workers=0, with_keys=False)
    with caplog.at_level(logging.WARNING, logger="data_pipelines"):
        resumed.load_state_dict(first.state_dict())
    assert "global_batch 4->2" in caplog.text
    assert resumed.epoch == 0 and resumed.step_in_epoch == 8 == resumed.steps_per_epoch // 2
    next(iter(resumed))
    assert resumed.step_in_epoch == 9


@pytest.mark.timeout(120)
def test_a_state_inside_a_global_batch_resumes_only_on_its_own_layout(imagenet_shards):
    # 1 rank, micro-batches of 2, global batch 4: two micro-batches per global batch; stop after one
    first = _stream(imagenet_shards["train"], world_size=1, rank=0, batch_size=2, global_batch=4)
    _take(iter(first), 3)
    state = first.state_dict()
    assert (state["global_step_in_epoch"], state["micro_in_step"]) == (1, 1)
    other = _stream(imagenet_shards["train"], world_size=2, rank=0, batch_size=2, global_batch=4)
    with pytest.raises(DataError, match=r"saved after 1 micro-batch\(es\) of a global batch by 1 process\(es\).*"
                                        r"resume from a state saved at an optimizer step"):
        other.load_state_dict(state)
    same = _stream(imagenet_shards["train"], world_size=1, rank=0, batch_size=2, global_batch=4)
    same.load_state_dict(state)
    assert same.step_in_epoch == 3
