"""The evaluation loader: every sample exactly once across ranks, equal batch counts on every rank.

Shards are dealt to groups of readers (reader = rank × workers + worker): with at least
``world_size × workers`` shards every reader is its own group; with at least ``world_size`` each
rank's workers form a group; otherwise all readers form one (small validation sets often have one
or two shards). A group reads its shards in order and its ``m`` members keep samples
``i ≡ member (mod m)``, so no sample is read by more readers than needed. Ranks
with fewer batches are padded at the end with padding batches (target -1 for ImageNet, all-255
label maps for Cityscapes), which metrics ignore; so are undecodable samples, which are counted.
A shard that cannot be read to its end (truncated, unreachable) loses the samples past the damage:
the loader counts them (``samples_lost``: the index's count minus what was read) so the evaluation
can say how much of the validation set its figures cover.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines.errors import DataError
from data_pipelines.labels import IGNORE_INDEX
from data_pipelines.samples import DecodeSpec
from data_pipelines.shards.index import ShardSet, read_shard_set
from data_pipelines.sources import TruncatedShard, iter_tar_samples, open_with_retries
from data_pipelines.transforms import BadSample, normalize
from data_pipelines.worker_signals import ignore_stop_signals

log = logging.getLogger("data_pipelines")
PAD_CLASS = -1


def _reader_groups(num_shards: int, world_size: int, worker_slots: int) -> int:
    """How many groups the shards are dealt to (see the module docstring)."""
    readers = world_size * worker_slots
    return readers if num_shards >= readers else world_size if num_shards >= world_size else 1


def _reader_counts(shard_set: ShardSet, world_size: int, worker_slots: int) -> tuple[int, list[int]]:
    """(groups, real samples of each reader)."""
    readers = world_size * worker_slots
    groups = _reader_groups(len(shard_set.counts), world_size, worker_slots)
    members = readers // groups
    group_sizes = [sum(shard_set.counts[g::groups]) for g in range(groups)]
    return groups, [len(range(r % members, group_sizes[r // members], members)) for r in range(readers)]


def _pad_target(decode: DecodeSpec, image: torch.Tensor):
    if decode.dataset == "imagenet":
        return PAD_CLASS
    return torch.full(image.shape[1:], IGNORE_INDEX, dtype=torch.uint8)


def _collate(decode: DecodeSpec, images: list, targets: list) -> tuple[torch.Tensor, torch.Tensor]:
    if decode.dataset == "imagenet":
        return torch.stack(images), torch.tensor(targets, dtype=torch.int64)
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    batch_images = torch.zeros(len(images), 3, height, width, dtype=torch.uint8)  # (B, 3, H, W)
    batch_targets = torch.full((len(images), height, width), IGNORE_INDEX, dtype=torch.uint8)  # (B, H, W)
    for n, (image, target) in enumerate(zip(images, targets)):
        batch_images[n, :, : image.shape[1], : image.shape[2]] = image
        batch_targets[n, : target.shape[0], : target.shape[1]] = target
    return batch_images, batch_targets


class _EvalReader(IterableDataset):
    def __init__(self, loader: EvalLoader):
        self.urls, self.groups = loader.shard_set.urls, loader.groups
        self.decode, self.batch_size = loader.decode, loader.batch_size
        self.rank, self.slots, self.readers = loader.rank, loader.worker_slots, loader.readers
        self.pad_shape = loader.pad_shape

    def _raw(self, reader: int):
        members = self.readers // self.groups
        group, member = reader // members, reader % members
        index = 0  # sample number within the group's shards
        for url in self.urls[group::self.groups]:
            try:
                with open_with_retries(url) as stream:
                    for sample in iter_tar_samples(stream, url, self.decode.wanted):
                        if index % members == member:
                            yield sample
                        index += 1
            except (OSError, TruncatedShard) as err:
                log.warning("evaluation lost samples of %s: %s", url, err)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        reader = self.rank * self.slots + (info.id if info is not None else 0)
        images, targets, bad = [], [], 0
        for raw in self._raw(reader):
            try:
                image, target = self.decode.decode(raw, None)
            except BadSample as err:
                log.warning("evaluation sample %s of %s is bad (%s): counted as padding", raw.key, raw.url, err)
                bad += 1
                image = torch.zeros(self.pad_shape, dtype=torch.uint8)
                target = _pad_target(self.decode, image)
            images.append(image)
            targets.append(target)
            if len(images) == self.batch_size:
                yield {"batch": _collate(self.decode, images, targets), "bad": bad}
                images, targets, bad = [], [], 0
        if images:
            yield {"batch": _collate(self.decode, images, targets), "bad": bad}


class EvalLoader:
    """Evaluation batches of one rank; ``len()`` is the same on every rank."""

    def __init__(self, decode: DecodeSpec, shard_set: ShardSet, *, batch_size: int, workers: int, rank: int,
                 world_size: int):
        self.decode, self.shard_set, self.batch_size = decode, shard_set, batch_size
        self.workers, self.rank, self.world_size = workers, rank, world_size
        self.worker_slots = max(workers, 1)
        self.readers = world_size * self.worker_slots
        self.groups, counts = _reader_counts(shard_set, world_size, self.worker_slots)
        per_rank_batches = [sum(math.ceil(counts[r * self.worker_slots + w] / batch_size)
                                for w in range(self.worker_slots)) for r in range(world_size)]
        self.num_batches = max(per_rank_batches)
        self.num_samples = sum(counts[rank * self.worker_slots:(rank + 1) * self.worker_slots])
        self.bad_samples = 0  # undecodable samples, evaluated as padding
        self.samples_read = 0  # real samples yielded by the current pass (bad ones excluded)
        self.samples_lost = 0  # samples the index promised that the last complete pass could not read
        if decode.dataset == "imagenet":
            self.pad_shape = (3, decode.image_size, decode.image_size)
        elif shard_set.image_size:
            self.pad_shape = (3, shard_set.image_size[1], shard_set.image_size[0])
        else:
            self.pad_shape = (3, decode.image_size, 2 * decode.image_size)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(_EvalReader(self), batch_size=None, num_workers=self.workers,
                            worker_init_fn=ignore_stop_signals if self.workers else None,
                            generator=torch.Generator())  # leave the trainer's global RNG alone
        produced = 0
        self.samples_read = self.samples_lost = 0
        delivered = 0  # samples (good or bad) this rank's readers produced
        for item in loader:
            if produced == self.num_batches:
                raise DataError(f"{self.shard_set.spec} holds more samples than its index says: re-write the "
                                "index (`mdeq shards`) so every rank runs the same number of batches")
            self.bad_samples += item["bad"]
            images, targets = item["batch"]
            produced += 1
            delivered += images.shape[0]
            self.samples_read += images.shape[0] - item["bad"]
            yield normalize(images), targets.long()
        self.samples_lost = self.num_samples - delivered
        if self.samples_lost:
            log.warning("evaluation on rank %d lost %d of its %d samples of %s (unreadable shard data, see above)",
                        self.rank, self.samples_lost, self.num_samples, self.shard_set.spec)
        padding = self._padding_batch()
        for _ in range(self.num_batches - produced):
            yield padding

    def _padding_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.zeros(self.batch_size, *self.pad_shape)  # (B, 3, H, W)
        if self.decode.dataset == "imagenet":
            return images, torch.full((self.batch_size,), PAD_CLASS, dtype=torch.int64)
        return images, torch.full((self.batch_size, *self.pad_shape[1:]), IGNORE_INDEX, dtype=torch.int64)


def build_eval_loader(dataset: str, shards: str, *, batch_size: int, workers: int, rank: int, world_size: int,
                      image_size: int, eval_resize: int | None = None) -> EvalLoader:
    """Evaluation batches of one rank (see the module docstring)."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise DataError(f"bad loader layout: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                        f"workers={workers}")
    shard_set = read_shard_set(shards).with_counts()
    if shard_set.dataset is not None and shard_set.dataset != dataset:
        raise DataError(f"{shards} holds {shard_set.dataset} shards but data.dataset is {dataset!r}")
    if shard_set.total_samples < world_size:
        raise DataError(f"{shards} holds {shard_set.total_samples} samples, fewer than the {world_size} ranks")
    decode = DecodeSpec(dataset=dataset, train=False, image_size=image_size, eval_resize=eval_resize,
                        num_classes=shard_set.num_classes)
    return EvalLoader(decode, shard_set, batch_size=batch_size, workers=workers, rank=rank, world_size=world_size)
