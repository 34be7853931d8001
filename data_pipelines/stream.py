"""The training stream: shards -> per-rank batches, equal steps per rank, exactly resumable.

See ``order.py`` for the order. Each epoch has ``steps_per_epoch = total_samples // (world_size ×
batch_size)`` batches on every rank. Worker ``w`` makes its share of them from its reader's
stream; if its shards hold fewer samples than that share it reads them again (reshuffled), if they
hold more the rest waits for the next epoch's reshuffle. With equally sized shards dealt evenly,
every sample is seen exactly once per epoch.

A bad sample (undecodable image, missing or out-of-range label) keeps its position: it is
replaced by the next good sample of the stream, augmented with the bad position's randomness, so
batch ``b`` always consists of stream positions ``b·B … b·B+B−1`` and resuming only has to skip
``b·B`` raw samples per worker, without decoding them.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipelines import order
from data_pipelines.errors import DataError
from data_pipelines.samples import DecodeSpec
from data_pipelines.shards.index import ShardSet, check_readers, read_shard_set
from data_pipelines.state import StreamState, restore_position
from data_pipelines.transforms import BadSample, normalize
from data_pipelines.worker_signals import ignore_stop_signals

log = logging.getLogger("data_pipelines")
MAX_NOTES = 5  # bad-sample messages carried per batch (the count is always exact)
REPLACEMENT_SCAN = 1000  # how far ahead a bad sample's replacement is looked for


@dataclass(frozen=True)
class StreamPlan:
    """Everything a loader worker needs; picklable."""

    urls: tuple[str, ...]
    counts: tuple[int, ...] | None
    decode: DecodeSpec
    batch_size: int
    rank: int
    world_size: int
    workers: int
    seed: int
    shuffle_buffer: int
    steps_per_epoch: int
    with_keys: bool = False

    @property
    def worker_slots(self) -> int:
        return max(self.workers, 1)


class _EpochReader(IterableDataset):
    """One epoch of one rank, from batch ``start_step`` on; each worker makes its round-robin share."""

    def __init__(self, plan: StreamPlan, epoch: int, start_step: int):
        self.plan, self.epoch, self.start_step = plan, epoch, start_step

    def __iter__(self) -> Iterator[dict]:
        plan, epoch = self.plan, self.epoch
        info = get_worker_info()
        # DataLoader asks worker 0 first, but the next batch (number start_step) belongs to worker
        # start_step % workers: rotate, so each batch is made by the same logical worker as in a run
        # that never stopped
        worker = ((info.id if info is not None else 0) + self.start_step) % plan.worker_slots
        reader = plan.rank * plan.worker_slots + worker
        readers = plan.world_size * plan.worker_slots
        first = order.worker_batches(self.start_step, worker, plan.worker_slots)  # already consumed
        last = order.worker_batches(plan.steps_per_epoch, worker, plan.worker_slots)
        losses = {"count": 0, "notes": [], "counting": False}

        def on_loss(url: str, lost: int, reason: str) -> None:
            if losses["counting"]:  # losses inside the skipped part were counted before the resume
                losses["count"] += lost
                losses["notes"].append(f"{url}: {reason}")

        shard_ids = order.reader_shards(len(plan.urls), plan.seed, epoch, reader, readers)
        raw = order.reader_stream(list(plan.urls), list(plan.counts) if plan.counts else None, shard_ids,
                                  seed=plan.seed, epoch=epoch, reader=reader, wanted=plan.decode.wanted,
                                  buffer_size=plan.shuffle_buffer, on_loss=on_loss)
        ahead: deque = deque()  # samples read ahead to replace bad ones; still to be consumed in order

        def take():
            return ahead.popleft() if ahead else next(raw)

        def peek(i: int):
            while len(ahead) <= i:
                ahead.append(next(raw))
            return ahead[i]

        try:
            for _ in range(first * plan.batch_size):  # resume: skip consumed positions, undecoded
                take()
            losses["counting"] = True
            for batch_index in range(first, last):
                yield self._batch(batch_index, take, peek, losses, reader)
        except DataError as err:
            yield {"error": str(err)}

    def _batch(self, batch_index: int, take, peek, losses: dict, reader: int) -> dict:
        plan = self.plan
        raws = [take() for _ in range(plan.batch_size)]
        images, targets, keys = [], [], []
        bad, notes = 0, []
        for j, raw in enumerate(raws):
            position = batch_index * plan.batch_size + j
            try:
                image, target = plan.decode.decode(raw, order.sample_rng(plan.seed, self.epoch, reader, position))
            except BadSample as err:
                bad += 1
                notes.append(f"{raw.url}: sample {raw.key}: {err}")
                image, target, raw = self._replacement(raws[j + 1:], peek, position, reader)
            images.append(image)
            targets.append(target)
            keys.append(raw.key)
        bad += losses["count"]
        notes += losses["notes"]
        losses["count"], losses["notes"] = 0, []
        images_t = torch.stack(images)  # (B, 3, H, W) uint8
        targets_t = torch.tensor(targets, dtype=torch.int64) if plan.decode.dataset == "imagenet" \
            else torch.stack(targets)  # (B,) int64 | (B, H, W) uint8
        batch = {"images": images_t, "targets": targets_t, "bad": bad, "notes": notes[:MAX_NOTES]}
        if plan.with_keys:
            batch["keys"] = keys
        return batch

    def _replacement(self, rest_of_batch: list, peek, position: int, reader: int):
        """The next good sample after ``position``, decoded with ``position``'s randomness."""
        plan = self.plan
        candidates = list(rest_of_batch)
        for i in range(REPLACEMENT_SCAN):
            raw = candidates[i] if i < len(candidates) else peek(i - len(candidates))
            try:
                image, target = plan.decode.decode(raw, order.sample_rng(plan.seed, self.epoch, reader, position))
                return image, target, raw
            except BadSample:
                continue
        raise DataError(f"{REPLACEMENT_SCAN} consecutive samples are unreadable (reader {reader}); "
                        "the shards are damaged: re-write them with `mdeq shards`")


class TrainStream:
    """Endless training batches of one rank; see ``data_pipelines`` for the interface."""

    def __init__(self, plan: StreamPlan, shard_set: ShardSet, max_bad_fraction: float):
        self.plan, self.shard_set, self.max_bad_fraction = plan, shard_set, max_bad_fraction
        self.steps_per_epoch = plan.steps_per_epoch
        self.epoch = 0
        self.step_in_epoch = 0
        self.bad_samples = 0
        self.samples_seen = 0

    def __iter__(self) -> Iterator[tuple]:
        """Batches forever; the position advances as each batch is handed out (one iterator at a time)."""
        plan = self.plan
        while True:
            epoch, start = self.epoch, self.step_in_epoch
            if start >= self.steps_per_epoch:  # a state saved right after an epoch's last batch
                self.epoch, self.step_in_epoch = epoch + 1, 0
                continue
            loader = DataLoader(_EpochReader(plan, epoch, start), batch_size=None, num_workers=plan.workers,
                                prefetch_factor=4 if plan.workers else None, pin_memory=torch.cuda.is_available(),
                                worker_init_fn=ignore_stop_signals if plan.workers else None,
                                # its own generator: creating the iterator must not draw from the
                                # trainer's global torch RNG (a resumed run creates it at another step)
                                generator=torch.Generator().manual_seed(plan.seed + epoch))
            received = 0
            for batch in loader:
                if "error" in batch:
                    raise DataError(batch["error"])
                received += 1
                self._account(batch)
                # position of the NEXT batch: roll over to the next epoch as soon as this one is complete
                if start + received == self.steps_per_epoch:
                    self.epoch, self.step_in_epoch = epoch + 1, 0
                else:
                    self.step_in_epoch = start + received
                targets = batch["targets"]
                if targets.dtype == torch.uint8:
                    targets = targets.long()  # (B, H, W) int64, 255 = ignore
                out = (normalize(batch["images"]), targets)
                yield out + (batch["keys"],) if plan.with_keys else out
            if start + received != self.steps_per_epoch:
                raise DataError(f"epoch {epoch} of rank {plan.rank} gave {start + received} batches, expected "
                                f"{self.steps_per_epoch}")

    def _account(self, batch: dict) -> None:
        self.samples_seen += self.plan.batch_size
        self.bad_samples += batch["bad"]
        for note in batch["notes"]:
            log.warning("bad data skipped: %s", note)
        # a handful of bad samples early in a run is not a reason to stop: judge against >= 1000 samples
        if self.bad_samples > self.max_bad_fraction * max(self.samples_seen, 1000):
            raise DataError(f"{self.bad_samples} bad samples in {self.samples_seen} read on rank {self.plan.rank} "
                            f"exceeds data.max_bad_fraction={self.max_bad_fraction}: check the shards "
                            f"({self.shard_set.spec}) or raise the limit. Last: {batch['notes'][-1:]}")

    def state_dict(self) -> dict:
        """The position of the next batch and the counters; small and JSON-able."""
        return asdict(StreamState(epoch=self.epoch, step_in_epoch=self.step_in_epoch, seed=self.plan.seed,
                                  rank=self.plan.rank, world_size=self.plan.world_size, workers=self.plan.workers,
                                  batch_size=self.plan.batch_size, num_shards=len(self.plan.urls),
                                  steps_per_epoch=self.steps_per_epoch, bad_samples=self.bad_samples,
                                  samples_seen=self.samples_seen))

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off (call before iterating)."""
        self.epoch, self.step_in_epoch, self.bad_samples, self.samples_seen = restore_position(
            StreamState.from_dict(state), self.state_dict())


def build_train_stream(dataset: str, shards: str, *, batch_size: int, workers: int, rank: int, world_size: int,
                       seed: int, image_size: int, crop_size=None, scale_range=(0.5, 2.0), crop_scale=(0.08, 1.0),
                       augment: bool = True, shuffle_buffer: int = 1000, max_bad_fraction: float = 0.01,
                       eval_resize: int | None = None, with_keys: bool = False) -> TrainStream:
    """The training stream of one rank (see the package docstring). ``with_keys`` adds sample keys."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise DataError(f"bad loader layout: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                        f"workers={workers}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise DataError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(crop_scale)}")
    shard_set = read_shard_set(shards)
    check_readers(shard_set, world_size, workers)
    shard_set.with_counts()
    if shard_set.dataset is not None and shard_set.dataset != dataset:
        raise DataError(f"{shards} holds {shard_set.dataset} shards but data.dataset is {dataset!r}")
    steps = shard_set.total_samples // (world_size * batch_size)
    if steps < 1:
        raise DataError(f"{shards} holds {shard_set.total_samples} samples, fewer than one global batch "
                        f"({world_size} ranks x batch {batch_size}): lower data.batch_size or add data")
    decode = DecodeSpec(dataset=dataset, train=True, image_size=image_size, eval_resize=eval_resize,
                        crop_size=tuple(crop_size) if crop_size else None, scale_range=tuple(scale_range),
                        crop_scale=tuple(crop_scale), augment=augment, num_classes=shard_set.num_classes)
    plan = StreamPlan(urls=tuple(shard_set.urls), counts=tuple(shard_set.counts), decode=decode,
                      batch_size=batch_size, rank=rank, world_size=world_size, workers=workers, seed=seed,
                      shuffle_buffer=shuffle_buffer, steps_per_epoch=steps, with_keys=with_keys)
    return TrainStream(plan, shard_set, max_bad_fraction)
