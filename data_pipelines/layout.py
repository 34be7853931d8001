"""Canonical streams and how a layout (ranks × loader workers) takes its share of them.

The sample order is defined on a fixed number of *canonical streams* (``streams``, C), never on
the processes that read them: each global batch of G samples is ``G / C`` consecutive samples
(a *unit*) of every stream, streams in order. Rank ``r`` of R takes the contiguous block of
``C / R`` streams starting at ``r · C / R`` — its share of every global batch is ``G / R``
samples — and splits the block again over its loader workers. The micro-batches a rank yields are
consecutive slices of its share, so micro-batch ``k`` of rank ``r`` holds global positions
``(r·A + k)·m … (r·A + k + 1)·m − 1`` (A micro-steps of m samples): the same samples whatever
R is, for the same m.

What a layout must satisfy (anything else is refused with a ``DataError`` saying what to change):
C divides G; R divides C; R × m divides G (whole micro-steps). Workers beyond C / R per rank would
have no stream to read: ``make_layout`` starts only C / R of them (and logs it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from data_pipelines.errors import DataError

log = logging.getLogger("data_pipelines")

MAX_DEFAULT_STREAMS = 64  # the default C: many divisors for elastic world sizes, few buffers to hold


def default_streams(global_batch: int) -> int:
    """The largest divisor of ``global_batch`` up to 64: depends on the global batch only."""
    return max(c for c in range(1, min(global_batch, MAX_DEFAULT_STREAMS) + 1) if global_batch % c == 0)


@dataclass(frozen=True)
class StreamLayout:
    """Which canonical streams one rank and each of its workers read, and how its batches are cut."""

    streams: int  # C: canonical streams (fixed for the run)
    global_batch: int  # G: samples per optimizer step over all ranks
    micro_batch: int  # m: samples per rank per micro-step
    rank: int
    world_size: int  # R
    workers: int  # DataLoader workers per rank (0: the rank's own process reads)

    def __post_init__(self) -> None:
        c, g, m, r, w = self.streams, self.global_batch, self.micro_batch, self.world_size, self.workers
        if min(c, g, m, r) < 1 or w < 0 or not 0 <= self.rank < r:
            raise DataError(f"bad loader layout: streams={c}, global batch={g}, micro-batch={m}, "
                            f"rank={self.rank}, world_size={r}, workers={w}")
        if g % c:
            raise DataError(f"data.streams={c} does not divide the global batch {g}: every global batch takes "
                            f"the same number of samples from each stream; use a divisor of {g} "
                            f"(or leave data.streams unset for {default_streams(g)})")
        if c % r:
            raise DataError(f"{r} processes cannot share {c} canonical streams evenly: run a number of processes "
                            f"that divides {c}, or set data.streams to a multiple of {r} that divides the global "
                            f"batch {g}")
        if g % (r * m):
            # r divides c and c divides g, so g // r is whole here
            raise DataError(f"the global batch {g} over {r} processes is {g // r} samples per process, which "
                            f"micro-batches of {m} do not fill: choose data.batch_size dividing {g // r}")
        if w > c // r:
            raise DataError(f"{w} loader workers per process but only {c // r} canonical streams per process "
                            f"({c} streams / {r} processes): lower data.workers to {c // r} or raise data.streams")


    @property
    def unit(self) -> int:
        """Samples each stream gives to every global batch."""
        return self.global_batch // self.streams

    @property
    def streams_per_rank(self) -> int:
        return self.streams // self.world_size

    @property
    def share(self) -> int:
        """Samples of each global batch this rank gets (= micro-steps × micro-batch)."""
        return self.global_batch // self.world_size

    @property
    def micro_steps(self) -> int:
        """Micro-batches per global batch on each rank (the gradient accumulation)."""
        return self.share // self.micro_batch

    @property
    def readers(self) -> int:
        """Loader processes of this rank (the rank itself when workers is 0)."""
        return max(self.workers, 1)

    def worker_streams(self, worker: int) -> range:
        """Contiguous block of canonical streams worker ``worker`` of this rank reads (sizes differ by ≤ 1)."""
        first = self.rank * self.streams_per_rank
        per, extra = divmod(self.streams_per_rank, self.readers)
        start = first + worker * per + min(worker, extra)
        return range(start, start + per + (1 if worker < extra else 0))


def make_layout(*, streams: int | None, global_batch: int, micro_batch: int, rank: int, world_size: int,
                workers: int) -> StreamLayout:
    """The layout of one rank (``streams`` None: the default for ``global_batch``); raises DataError when
    the layout cannot be served, and starts at most one worker per canonical stream of the rank."""
    streams = streams or default_streams(global_batch)
    if streams >= world_size and streams % world_size == 0 and workers > streams // world_size:
        if rank == 0:
            log.info("%d loader workers per process requested but each process reads %d canonical streams: "
                     "starting %d", workers, streams // world_size, streams // world_size)
        workers = streams // world_size
    return StreamLayout(streams=streams, global_batch=global_batch, micro_batch=micro_batch, rank=rank,
                        world_size=world_size, workers=workers)
