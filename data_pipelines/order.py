"""The sample order: a pure function of (seed, epoch, rank, worker), so it can be replayed.

Per epoch the global shard list is shuffled with (seed, epoch) and dealt round-robin to the
``world_size × workers`` readers (reader = rank × workers + worker). A reader streams its shards
in that order (then again, reshuffled, if it needs more samples than they hold) through a
shuffle buffer seeded with (seed, epoch, reader). Sample ``p`` of a reader's stream is augmented
with a ``random.Random`` seeded by (seed, epoch, reader, p). Worker ``w`` of a rank makes batches
``w, w + workers, ...`` of the rank's epoch, which is the order DataLoader returns them in.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

from data_pipelines.errors import DataError
from data_pipelines.sources import RawSample, TruncatedShard, iter_tar_samples, open_with_retries

log = logging.getLogger("data_pipelines")


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """Shard ids in this epoch's global order (identical on every rank and worker)."""
    order = list(range(num_shards))
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def reader_shards(num_shards: int, seed: int, epoch: int, reader: int, readers: int) -> list[int]:
    return epoch_shard_order(num_shards, seed, epoch)[reader::readers]


def worker_batches(steps: int, worker: int, workers: int) -> int:
    """How many of a rank's first ``steps`` batches worker ``worker`` makes (round-robin)."""
    return len(range(worker, steps, max(workers, 1)))


def sample_rng(seed: int, epoch: int, reader: int, position: int) -> random.Random:
    return random.Random(f"sample/{seed}/{epoch}/{reader}/{position}")


# on_loss(url, samples_lost, reason): a shard could not be opened or ended early
LossCallback = Callable[[str, int, str], None]


def reader_stream(urls: list[str], counts: list[int] | None, shard_ids: list[int], *, seed: int, epoch: int,
                  reader: int, wanted: frozenset[str], buffer_size: int, on_loss: LossCallback
                  ) -> Iterator[RawSample]:
    """Endless raw samples of one reader: its shards through the shuffle buffer, then again
    (reshuffled), and so on. Each pass is shuffled and flushed on its own, so the first pass holds
    every sample of the reader's shards exactly once."""
    for repeat in range(1 << 30):
        ids = list(shard_ids)
        if repeat:
            random.Random(f"repeat/{seed}/{epoch}/{reader}/{repeat}").shuffle(ids)
        rng = random.Random(f"buffer/{seed}/{epoch}/{reader}/{repeat}")
        yielded = 0
        # losses are reported in the first pass only: a repeat pass loses the same samples again
        report = on_loss if repeat == 0 else _ignore_loss
        for sample in shuffle_buffer(_read_pass(urls, counts, ids, wanted, report), buffer_size, rng):
            yielded += 1
            yield sample
        if yielded == 0:
            raise DataError(f"reader {reader} found no readable sample in its {len(ids)} shards "
                            f"(first: {urls[ids[0]] if ids else '-'}); check the shards with `tar tf`")


def _ignore_loss(url: str, lost: int, reason: str) -> None:
    pass


def _read_pass(urls: list[str], counts: list[int] | None, ids: list[int], wanted: frozenset[str],
               on_loss: LossCallback) -> Iterator[RawSample]:
    for shard in ids:
        url = urls[shard]
        expected = counts[shard] if counts else None
        try:
            stream = open_with_retries(url)
        except OSError as err:
            on_loss(url, expected or 1, f"unreadable shard: {err}")
            continue
        read = 0
        try:
            with stream:
                for sample in iter_tar_samples(stream, url, wanted):
                    read += 1
                    yield sample
        except TruncatedShard as err:
            on_loss(url, max(1, (expected or 0) - read), f"truncated shard after {read} samples: {err}")
        else:
            if expected is not None and read < expected:
                on_loss(url, expected - read, f"shard ended after {read} of the {expected} samples its index lists "
                                             "(truncated?)")


def shuffle_buffer(samples: Iterator[RawSample], size: int, rng: random.Random) -> Iterator[RawSample]:
    """Reservoir-style shuffle: fill ``size`` samples, then emit a random one per sample read."""
    if size <= 1:
        yield from samples
        return
    buffer: list[RawSample] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        j = rng.randrange(size)
        buffer[j], sample = sample, buffer[j]
        yield sample
    rng.shuffle(buffer)
    yield from buffer
