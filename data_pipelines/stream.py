"""The training stream: shards -> per-rank micro-batches, equal steps per rank, exactly resumable,
in an order that does not depend on the number of ranks or loader workers.

See ``layout.py`` for canonical streams and ``order.py`` for the order. An epoch has
``global_steps_per_epoch = total_samples // global_batch`` global batches; global batch ``b`` is
unit ``b`` of every canonical stream. Each loader worker reads its block of the rank's streams and
hands over one *piece* per global batch (its streams' units, decoded); DataLoader returns pieces
worker after worker, so the rank's process concatenates ``readers`` consecutive pieces into its share
of the global batch, in stream order, and cuts it into micro-batches. Every rank yields
``steps_per_epoch = global_steps_per_epoch × micro_steps`` micro-batches per epoch.

A bad sample (undecodable image, missing or out-of-range label) keeps its position: it is
replaced by the next good sample of its stream, augmented with the bad position's randomness, so
unit ``b`` of a stream always consists of stream positions ``b·u … b·u+u−1`` and resuming only has
to skip ``b·u`` raw samples per stream, without decoding them.
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
from data_pipelines.layout import StreamLayout, make_layout
from data_pipelines.samples import DecodeSpec
from data_pipelines.shards.index import ShardSet, read_shard_set
from data_pipelines.state import StreamState, restore_position
from data_pipelines.transforms import BadSample, normalize
from data_pipelines.worker_signals import ignore_stop_signals

log = logging.getLogger("data_pipelines")
MAX_NOTES = 5  # bad-sample messages carried per piece (the count is always exact)
REPLACEMENT_SCAN = 1000  # how far ahead a bad sample's replacement is looked for


@dataclass(frozen=True)
class StreamPlan:
    """Everything a loader worker needs; picklable."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    decode: DecodeSpec
    layout: StreamLayout
    seed: int
    shuffle_buffer: int  # samples per canonical stream
    global_steps_per_epoch: int
    with_keys: bool = False

    @property
    def stream_length(self) -> int:
        """Samples of each canonical stream used per epoch."""
        return self.global_steps_per_epoch * self.layout.unit


class _Cursor:
    """One canonical stream inside a worker: raw samples in order, with look-ahead for replacements."""

    def __init__(self, plan: StreamPlan, epoch: int, stream: int, losses: dict):
        def on_loss(url: str, lost: int, reason: str) -> None:
            if losses["counting"]:  # losses inside the skipped part were counted before the resume
                losses["count"] += lost
                losses["notes"].append(f"{url}: {reason}")

        segments = order.stream_segments(list(plan.counts), plan.seed, epoch, stream, plan.stream_length)
        self.stream = stream
        self.raw = order.stream_samples(list(plan.urls), segments, seed=plan.seed, epoch=epoch, stream=stream,
                                        wanted=plan.decode.wanted, buffer_size=plan.shuffle_buffer,
                                        on_loss=on_loss)
        self.ahead: deque = deque()  # samples read ahead to replace bad ones; still to be consumed in order

    def take(self):
        return self.ahead.popleft() if self.ahead else next(self.raw)

    def peek(self, i: int):
        while len(self.ahead) <= i:
            self.ahead.append(next(self.raw))
        return self.ahead[i]


class _EpochReader(IterableDataset):
    """One epoch of one worker's streams, from global batch ``start`` on: one piece per global batch."""

    def __init__(self, plan: StreamPlan, epoch: int, start: int):
        self.plan, self.epoch, self.start = plan, epoch, start

    def __iter__(self) -> Iterator[dict]:
        plan, unit = self.plan, self.plan.layout.unit
        info = get_worker_info()
        worker = info.id if info is not None else 0
        losses = {"count": 0, "notes": [], "counting": False}
        try:
            cursors = [_Cursor(plan, self.epoch, s, losses) for s in plan.layout.worker_streams(worker)]
            for cursor in cursors:  # resume: skip consumed positions, undecoded
                for _ in range(self.start * unit):
                    cursor.take()
            losses["counting"] = True
            for batch_index in range(self.start, plan.global_steps_per_epoch):
                yield self._piece(batch_index, cursors, losses)
        except DataError as err:
            yield {"error": str(err)}

    def _piece(self, batch_index: int, cursors: list[_Cursor], losses: dict) -> dict:
        plan, unit = self.plan, self.plan.layout.unit
        images, targets, keys = [], [], []
        bad, notes = 0, []
        for cursor in cursors:
            raws = [cursor.take() for _ in range(unit)]
            for j, raw in enumerate(raws):
                position = batch_index * unit + j
                rng = order.sample_rng(plan.seed, self.epoch, cursor.stream, position)
                try:
                    image, target = plan.decode.decode(raw, rng)
                except BadSample as err:
                    bad += 1
                    notes.append(f"{raw.url}: sample {raw.key}: {err}")
                    image, target, raw = self._replacement(raws[j + 1:], cursor, position)
                images.append(image)
                targets.append(target)
                keys.append(raw.key)
        bad += losses["count"]
        notes += losses["notes"]
        losses["count"], losses["notes"] = 0, []
        images_t = torch.stack(images)  # (n, 3, H, W) uint8
        targets_t = torch.tensor(targets, dtype=torch.int64) if plan.decode.dataset == "imagenet" \
            else torch.stack(targets)  # (n,) int64 | (n, H, W) uint8
        return {"images": images_t, "targets": targets_t, "bad": bad, "notes": notes[:MAX_NOTES], "keys": keys,
                "global_batch": batch_index}

    def _replacement(self, rest_of_unit: list, cursor: _Cursor, position: int):
        """The next good sample of the stream after ``position``, decoded with ``position``'s randomness."""
        plan = self.plan
        for i in range(REPLACEMENT_SCAN):
            raw = rest_of_unit[i] if i < len(rest_of_unit) else cursor.peek(i - len(rest_of_unit))
            try:
                image, target = plan.decode.decode(raw, order.sample_rng(plan.seed, self.epoch, cursor.stream,
                                                                         position))
                return image, target, raw
            except BadSample:
                continue
        raise DataError(f"{REPLACEMENT_SCAN} consecutive samples are unreadable (stream {cursor.stream}); "
                        "the shards are damaged: re-write them with `mdeq shards`")


class TrainStream:
    """Endless training micro-batches of one rank; see ``data_pipelines`` for the interface."""

    def __init__(self, plan: StreamPlan, shard_set: ShardSet, max_bad_fraction: float):
        self.plan, self.shard_set, self.max_bad_fraction = plan, shard_set, max_bad_fraction
        self.layout = plan.layout
        self.global_steps_per_epoch = plan.global_steps_per_epoch
        self.steps_per_epoch = plan.global_steps_per_epoch * plan.layout.micro_steps  # micro-batches of this rank
        self.epoch = 0
        self.global_step_in_epoch = 0  # global batches of this epoch completely consumed
        self.micro_in_step = 0  # micro-batches of the current global batch consumed (this rank)
        self.bad_samples = 0
        self.samples_seen = 0

    @property
    def step_in_epoch(self) -> int:
        """Micro-batches of this epoch this rank has handed out."""
        return self.global_step_in_epoch * self.layout.micro_steps + self.micro_in_step

    def __iter__(self) -> Iterator[tuple]:
        """Micro-batches forever; the position advances as each is handed out (one iterator at a time)."""
        plan, layout = self.plan, self.layout
        micro, steps = layout.micro_batch, self.global_steps_per_epoch
        while True:
            epoch, start, skip = self.epoch, self.global_step_in_epoch, self.micro_in_step
            if start >= steps:  # a state saved right after an epoch's last batch
                self.epoch, self.global_step_in_epoch, self.micro_in_step = epoch + 1, 0, 0
                continue
            loader = DataLoader(_EpochReader(plan, epoch, start), batch_size=None, num_workers=layout.workers,
                                prefetch_factor=4 if layout.workers else None, pin_memory=torch.cuda.is_available(),
                                worker_init_fn=ignore_stop_signals if layout.workers else None,
                                # its own generator: creating the iterator must not draw from the
                                # trainer's global torch RNG (a resumed run creates it at another step)
                                generator=torch.Generator().manual_seed(plan.seed + epoch))
            pieces = iter(loader)
            for batch_index in range(start, steps):
                share = self._share(pieces, batch_index)
                for k in range(skip if batch_index == start else 0, layout.micro_steps):
                    # position of the NEXT micro-batch: roll over as soon as a global batch / epoch is complete
                    if k + 1 < layout.micro_steps:
                        self.micro_in_step = k + 1
                    elif batch_index + 1 < steps:
                        self.global_step_in_epoch, self.micro_in_step = batch_index + 1, 0
                    else:
                        self.epoch, self.global_step_in_epoch, self.micro_in_step = epoch + 1, 0, 0
                    self.samples_seen += micro
                    part = slice(k * micro, (k + 1) * micro)
                    targets = share["targets"][part]
                    if targets.dtype == torch.uint8:
                        targets = targets.long()  # (m, H, W) int64, 255 = ignore
                    out = (normalize(share["images"][part]), targets)
                    yield out + (share["keys"][part],) if plan.with_keys else out

    def _share(self, pieces: Iterator[dict], batch_index: int) -> dict:
        """This rank's share of global batch ``batch_index``: one piece per reader, in stream order."""
        parts = []
        for _ in range(self.layout.readers):
            try:
                piece = next(pieces)
            except StopIteration:
                raise DataError(f"the loader of rank {self.layout.rank} ended before global batch {batch_index} "
                                f"of epoch {self.epoch}") from None
            if "error" in piece:
                raise DataError(piece["error"])
            parts.append(piece)
        share = {"images": torch.cat([p["images"] for p in parts]), "targets": torch.cat([p["targets"] for p in parts]),
                 "keys": [k for p in parts for k in p["keys"]]}
        self._account(sum(p["bad"] for p in parts), [n for p in parts for n in p["notes"]])
        return share

    def _account(self, bad: int, notes: list[str]) -> None:
        self.bad_samples += bad
        for note in notes:
            log.warning("bad data skipped: %s", note)
        # a handful of bad samples early in a run is not a reason to stop: judge against >= 1000 samples
        if self.bad_samples > self.max_bad_fraction * max(self.samples_seen + self.layout.share, 1000):
            raise DataError(f"{self.bad_samples} bad samples in {self.samples_seen + self.layout.share} read on rank "
                            f"{self.layout.rank} exceeds data.max_bad_fraction={self.max_bad_fraction}: check the "
                            f"shards ({self.shard_set.spec}) or raise the limit. Last: {notes[-1:]}")

    def state_dict(self) -> dict:
        """The position of the next micro-batch and the counters; small, JSON-able and layout-free."""
        layout = self.layout
        return asdict(StreamState(
            epoch=self.epoch, global_step_in_epoch=self.global_step_in_epoch, micro_in_step=self.micro_in_step,
            seed=self.plan.seed, streams=layout.streams, global_batch=layout.global_batch,
            num_shards=len(self.plan.urls), total_samples=sum(self.plan.counts), micro_batch=layout.micro_batch,
            world_size=layout.world_size, workers=layout.workers, bad_samples=self.bad_samples,
            samples_seen=self.samples_seen))

    def load_state_dict(self, state: dict) -> None:
        """Continue where ``state`` left off (call before iterating); ``state`` may come from any layout."""
        self.epoch, self.global_step_in_epoch, self.micro_in_step, self.bad_samples, self.samples_seen = \
            restore_position(StreamState.from_dict(state), self.state_dict(), self.global_steps_per_epoch)


def build_train_stream(dataset: str, shards: str, *, batch_size: int, workers: int, rank: int, world_size: int,
                       seed: int, image_size: int, crop_size=None, scale_range=(0.5, 2.0), crop_scale=(0.08, 1.0),
                       augment: bool = True, shuffle_buffer: int = 1000, max_bad_fraction: float = 0.01,
                       eval_resize: int | None = None, with_keys: bool = False, global_batch: int | None = None,
                       streams: int | None = None) -> TrainStream:
    """The training stream of one rank (see the package docstring). ``with_keys`` adds sample keys.

    ``global_batch`` (default ``world_size × batch_size``) is the samples of one optimizer step over
    all ranks; each rank yields ``global_batch / (world_size × batch_size)`` micro-batches of it.
    ``streams`` is the number of canonical streams (default: the largest divisor of the global batch
    up to 64); ``shuffle_buffer`` is split evenly over them.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or workers < 0:
        raise DataError(f"bad loader layout: batch_size={batch_size}, rank={rank}, world_size={world_size}, "
                        f"workers={workers}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise DataError(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got {list(crop_scale)}")
    global_batch = global_batch if global_batch is not None else world_size * batch_size
    layout = make_layout(streams=streams, global_batch=global_batch, micro_batch=batch_size, rank=rank,
                         world_size=world_size, workers=workers)
    shard_set = read_shard_set(shards).with_counts()
    if shard_set.dataset is not None and shard_set.dataset != dataset:
        raise DataError(f"{shards} holds {shard_set.dataset} shards but data.dataset is {dataset!r}")
    steps = shard_set.total_samples // global_batch
    if steps < 1:
        raise DataError(f"{shards} holds {shard_set.total_samples} samples, fewer than one global batch "
                        f"({global_batch}): lower data.batch_size / train.global_batch_size or add data")
    decode = DecodeSpec(dataset=dataset, train=True, image_size=image_size, eval_resize=eval_resize,
                        crop_size=tuple(crop_size) if crop_size else None, scale_range=tuple(scale_range),
                        crop_scale=tuple(crop_scale), augment=augment, num_classes=shard_set.num_classes)
    plan = StreamPlan(urls=tuple(shard_set.urls), counts=tuple(shard_set.counts), decode=decode, layout=layout,
                      seed=seed, shuffle_buffer=max(1, -(-shuffle_buffer // layout.streams)),
                      global_steps_per_epoch=steps, with_keys=with_keys)
    return TrainStream(plan, shard_set, max_bad_fraction)
