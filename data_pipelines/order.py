"""The sample order: a pure function of (seed, epoch, shards, streams, global batch), never of the
number of ranks or loader workers, so it can be replayed on any layout.

Per epoch the global shard list is shuffled with (seed, epoch); its samples, shard after shard, form
one virtual sequence. Canonical stream ``s`` (see ``layout.py``) takes the contiguous range
``[s·L, (s+1)·L)`` of it, ``L = steps_per_epoch × unit`` — a range may start and end inside a shard,
and every stream holds the same number of samples, so with shards of any sizes each sample of an
epoch is used exactly once (the ``total mod global_batch`` samples at the end of the sequence wait
for another epoch, where the shard order differs). A stream reads its range through a shuffle buffer
seeded with (seed, epoch, stream); sample ``p`` of a stream is augmented with a ``random.Random``
seeded by (seed, epoch, stream, p).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator

from data_pipelines.errors import DataError
from data_pipelines.sources import RawSample, TruncatedShard, iter_tar_samples, open_with_retries

log = logging.getLogger("data_pipelines")

# (shard id, samples of that shard to skip, samples to take): a piece of a stream's range
Segment = tuple[int, int, int]


def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> list[int]:
    """Shard ids in this epoch's global order (identical on every rank and worker)."""
    order = list(range(num_shards))
    random.Random(f"shards/{seed}/{epoch}").shuffle(order)
    return order


def stream_segments(counts: list[int], seed: int, epoch: int, stream: int, length: int) -> list[Segment]:
    """The shard pieces holding positions ``[stream·length, (stream+1)·length)`` of the epoch's sequence."""
    begin, end = stream * length, (stream + 1) * length
    segments: list[Segment] = []
    offset = 0  # position of the current shard's first sample in the sequence
    for shard in epoch_shard_order(len(counts), seed, epoch):
        count = counts[shard]
        lo, hi = max(begin, offset), min(end, offset + count)
        if lo < hi:
            segments.append((shard, lo - offset, hi - lo))
        offset += count
        if offset >= end:
            break
    return segments


def sample_rng(seed: int, epoch: int, stream: int, position: int) -> random.Random:
    return random.Random(f"sample/{seed}/{epoch}/{stream}/{position}")


# on_loss(url, samples_lost, reason): a shard could not be opened or ended early
LossCallback = Callable[[str, int, str], None]


def stream_samples(urls: list[str], segments: list[Segment], *, seed: int, epoch: int, stream: int,
                   wanted: frozenset[str], buffer_size: int, on_loss: LossCallback) -> Iterator[RawSample]:
    """Endless raw samples of one canonical stream: its range through the shuffle buffer, then again
    (reshuffled; only read when samples were lost or bad ones needed replacing), and so on. The first
    pass holds every sample of the range exactly once."""
    for repeat in range(1 << 30):
        pieces = list(segments)
        if repeat:
            random.Random(f"repeat/{seed}/{epoch}/{stream}/{repeat}").shuffle(pieces)
        rng = random.Random(f"buffer/{seed}/{epoch}/{stream}/{repeat}")
        yielded = 0
        # losses are reported in the first pass only: a repeat pass loses the same samples again
        report = on_loss if repeat == 0 else _ignore_loss
        for sample in shuffle_buffer(_read_segments(urls, pieces, wanted, report), buffer_size, rng):
            yielded += 1
            yield sample
        if yielded == 0:
            first = urls[pieces[0][0]] if pieces else "-"
            raise DataError(f"stream {stream} found no readable sample in its {len(pieces)} shard piece(s) "
                            f"(first: {first}); check the shards with `tar tf`")


def _ignore_loss(url: str, lost: int, reason: str) -> None:
    pass


def _read_segments(urls: list[str], segments: list[Segment], wanted: frozenset[str],
                   on_loss: LossCallback) -> Iterator[RawSample]:
    for shard, skip, take in segments:
        url = urls[shard]
        try:
            stream = open_with_retries(url)
        except OSError as err:
            on_loss(url, take, f"unreadable shard: {err}")
            continue
        index = read = 0
        try:
            with stream:
                # skipped samples are read past undecoded (only their wanted fields are buffered)
                for sample in iter_tar_samples(stream, url, wanted):
                    index += 1
                    if index <= skip:
                        continue
                    read += 1
                    yield sample
                    if read == take:
                        break
        except TruncatedShard as err:
            on_loss(url, take - read, f"truncated shard after {index} samples: {err}")
        else:
            if read < take:
                on_loss(url, take - read, f"shard ended after {index} samples, fewer than its index lists "
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
