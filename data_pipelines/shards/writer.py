"""Crash-safe, restartable, parallel shard writing.

Samples are assigned to shards up front (a pure function of the sorted source list and a fixed
seed), so a re-run produces the same shards. Each shard is written under a temporary name, fsynced,
renamed when complete and its directory fsynced (``data_pipelines.atomic``); a small record
(samples, bytes, sha256) goes to ``.progress/<shard>.json`` the same way. A re-run skips every
shard whose file and record exist, and the index is written (atomically) only when all shards are
complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipelines.atomic import atomic_write_text, fsync_dir, replace_durably
from data_pipelines.errors import DataError
from data_pipelines.shards.index import INDEX_FORMAT, INDEX_NAME, ShardSet, read_shard_set

# make_sample(item) -> (key, {field: bytes}); must be a picklable module-level function
SampleMaker = Callable[[Any], tuple[str, dict[str, bytes]]]


@dataclass
class ShardJob:
    name: str
    path: str
    items: list
    make_sample: SampleMaker


def _write_one(job: ShardJob) -> dict:
    """Write one shard under a temporary name, fsync, rename; return its record."""
    final = Path(job.path)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    digest = hashlib.sha256()

    class _Hashing(io.RawIOBase):  # hash while writing, so the file is not read twice
        def __init__(self, raw):
            self.raw = raw

        def writable(self):
            return True

        def write(self, b):
            digest.update(b)
            return self.raw.write(b)

    with open(tmp, "wb") as raw:
        with tarfile.open(fileobj=_Hashing(raw), mode="w|", format=tarfile.USTAR_FORMAT) as archive:
            for item in job.items:
                key, fields = job.make_sample(item)
                if "." in key:
                    raise DataError(f"sample key {key!r} contains a dot; WebDataset keys must not")
                for ext, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible bytes
                    archive.addfile(info, io.BytesIO(data))
    replace_durably(tmp, final)  # the shard's bytes, then its name, on disk before its record
    return {"name": final.name, "samples": len(job.items), "bytes": final.stat().st_size,
            "sha256": digest.hexdigest()}


def _record_path(out: Path, name: str) -> Path:
    return out / ".progress" / f"{name}.json"


def _write_and_record(job: ShardJob) -> dict:
    record = _write_one(job)
    atomic_write_text(_record_path(Path(job.path).parent, record["name"]), json.dumps(record))
    return record


def write_shards(out: str | os.PathLike, *, split: str, items: Sequence, make_sample: SampleMaker,
                 samples_per_shard: int, workers: int = 1, index_extra: dict | None = None,
                 dataset: str, progress: bool = True) -> ShardSet:
    """Write ``items`` into ``<split>-NNNNNN.tar`` shards under ``out``, then ``index.json``.

    Restartable: complete shards from an earlier (interrupted) run are kept. Returns the ShardSet.
    """
    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be >= 1, got {samples_per_shard}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ".progress").mkdir(exist_ok=True)
    fsync_dir(out_dir)  # the .progress entry itself, before records go into it
    index_path = out_dir / INDEX_NAME
    if index_path.exists():
        existing = json.loads(index_path.read_text())
        if existing.get("split") != split or existing.get("dataset") != dataset:
            raise DataError(f"{out_dir} already holds {existing.get('dataset')} {existing.get('split')} shards; "
                            f"write each split into its own directory (e.g. {out_dir.parent}/{split})")
    for stale in out_dir.glob(".*.partial-*"):  # left by a crashed run: never renamed, never indexed
        stale.unlink()
    jobs = []
    for start in range(0, len(items), samples_per_shard):
        name = f"{split}-{start // samples_per_shard:06d}.tar"
        jobs.append(ShardJob(name, str(out_dir / name), list(items[start:start + samples_per_shard]), make_sample))
    records: dict[str, dict] = {}
    todo = []
    for job in jobs:
        record_path = _record_path(out_dir, job.name)
        if Path(job.path).exists() and record_path.exists():
            record = json.loads(record_path.read_text())
            if record.get("samples") == len(job.items):
                records[job.name] = record
                continue
        todo.append(job)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), initial=len(records), unit="shard", desc=f"{dataset} {split}")
    try:
        if workers > 1 and len(todo) > 1:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                for record in pool.imap_unordered(_write_and_record, todo):
                    records[record["name"]] = record
                    if bar:
                        bar.update(1)
        else:
            for job in todo:
                record = _write_and_record(job)
                records[record["name"]] = record
                if bar:
                    bar.update(1)
    finally:
        if bar:
            bar.close()
    index = {"format": INDEX_FORMAT, "dataset": dataset, "split": split,
             "shards": [records[job.name] for job in jobs], "samples": len(items), **(index_extra or {})}
    atomic_write_text(index_path, json.dumps(index, indent=1))
    return read_shard_set(str(out_dir))
