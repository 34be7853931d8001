"""Finding shards from a spec and reading the index ``mdeq shards`` writes beside them.

A spec is a directory (its ``index.json`` if present, else its ``*.tar`` files, sorted), an index
file, a brace pattern (``/data/train-{000000..000127}.tar``), a glob, one ``.tar``, or a URL:
``http(s)://host/dir/`` (reads ``index.json`` there), a brace pattern of URLs, or any fsspec URL.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass, field

import braceexpand

from data_pipelines.errors import DataError
from data_pipelines.sources import count_samples, is_remote, local_path, read_bytes

INDEX_NAME = "index.json"
INDEX_FORMAT = "mdeq-shards/1"
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")


@dataclass
class ShardSet:
    """The shards of one split, with what the index knows about them."""

    spec: str
    urls: list[str]
    counts: list[int] | None = None  # samples per shard (None: no index; see with_counts)
    dataset: str | None = None  # "imagenet" | "cityscapes" | None (community shards)
    split: str | None = None
    classes: list[str] = field(default_factory=list)  # class names (wnids) in class-id order
    num_classes: int | None = None
    image_size: list[int] | None = None  # [W, H] when every image has that size (Cityscapes)

    @property
    def shards(self) -> list[str]:
        """Alias of ``urls``."""
        return self.urls

    @property
    def total_samples(self) -> int:
        if self.counts is None:
            raise DataError(f"sample counts of {self.spec} are unknown; call with_counts() first")
        return sum(self.counts)

    def with_counts(self) -> ShardSet:
        """Fill ``counts`` by scanning shards that came without an index (headers only when local)."""
        if self.counts is None:
            self.counts = [count_samples(url) for url in self.urls]
        return self


def _read_index(index_url: str) -> ShardSet:
    try:
        index = json.loads(read_bytes(index_url))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read shard index {index_url}: {err}") from err
    if index.get("format") != INDEX_FORMAT:
        raise DataError(f"{index_url} is not an index written by `mdeq shards` (format {index.get('format')!r})")
    base = index_url.rsplit("/", 1)[0] if "/" in index_url else "."
    shards = index["shards"]
    # names are relative to the index; an absolute path or URL (an index of someone else's shards) is kept
    urls = [s["name"] if "://" in s["name"] or s["name"].startswith("/") else f"{base}/{s['name']}" for s in shards]
    return ShardSet(spec=index_url, urls=urls,
                    counts=[int(s["samples"]) for s in shards], dataset=index.get("dataset"),
                    split=index.get("split"), classes=list(index.get("classes", [])),
                    num_classes=index.get("num_classes"), image_size=index.get("image_size"))


def read_shard_set(spec: str) -> ShardSet:
    """Resolve a spec into a ShardSet (see the module docstring for accepted forms)."""
    spec = str(spec).strip()
    if not spec:
        raise DataError("no shards given: set data.train_shards / data.val_shards to a directory written by "
                        "`mdeq shards`, a brace pattern like /data/train-{000000..000127}.tar, or a URL")
    if spec.endswith(".json"):
        return _read_index(spec)
    if "{" in spec:
        urls = list(braceexpand.braceexpand(spec))
        if not is_remote(spec):
            missing = [u for u in urls if not os.path.exists(local_path(u))]
            if missing:
                raise DataError(f"{len(missing)} of {len(urls)} shards of {spec} do not exist (first: {missing[0]})")
        return ShardSet(spec=spec, urls=urls)
    if is_remote(spec):
        if spec.endswith(_TAR_SUFFIXES):
            return ShardSet(spec=spec, urls=[spec])
        try:
            return _read_index(spec.rstrip("/") + "/" + INDEX_NAME)
        except DataError as err:
            raise DataError(f"{spec} is a remote location without a readable {INDEX_NAME} ({err}); "
                            "give a brace pattern of shard URLs instead") from err
    path = local_path(spec)
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, INDEX_NAME)):
            return _read_index(os.path.join(path, INDEX_NAME))
        urls = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(_TAR_SUFFIXES))
        if not urls:
            raise DataError(f"{spec} holds no shards (no {INDEX_NAME}, no *.tar): write them with "
                            "`mdeq shards imagenet|cityscapes --src RAW --out {spec} --split ...`")
        return ShardSet(spec=spec, urls=urls)
    if any(c in path for c in "*?["):
        urls = sorted(glob.glob(path))
        if not urls:
            raise DataError(f"no shards match {spec}")
        return ShardSet(spec=spec, urls=urls)
    if os.path.isfile(path) and path.endswith(_TAR_SUFFIXES):
        return ShardSet(spec=spec, urls=[path])
    raise DataError(f"shards {spec!r} not found: expected a directory written by `mdeq shards`, a brace "
                    "pattern, a glob, a .tar file or a URL")


def list_shards(spec: str) -> list[str]:
    """The shard URLs/paths a spec names, in order."""
    return read_shard_set(spec).urls


def num_classes_of(spec: str) -> int | None:
    """Classes of the shards' dataset (19 for Cityscapes); None when the shards carry no index."""
    shard_set = read_shard_set(spec)
    if shard_set.dataset == "cityscapes":
        return 19
    return shard_set.num_classes


def check_readers(spec: str | ShardSet, world_size: int, workers: int, *, batch_size: int | None = None,
                  global_batch: int | None = None, streams: int | None = None) -> ShardSet:
    """Raise DataError unless the shards can feed this layout (the launcher's and trainer's preflight).

    With ``batch_size`` (and ``global_batch``, default ``world_size × batch_size``) the layout is checked
    against the canonical streams (``data_pipelines.layout``). Any number of shards works: streams
    take sample ranges, not whole shards (that they hold one global batch is checked by the stream).
    """
    from data_pipelines.layout import make_layout

    shard_set = spec if isinstance(spec, ShardSet) else read_shard_set(spec)
    if not shard_set.urls:
        raise DataError(f"{shard_set.spec} lists no shards")
    if batch_size is None:
        return shard_set
    global_batch = global_batch if global_batch is not None else world_size * batch_size
    make_layout(streams=streams, global_batch=global_batch, micro_batch=batch_size, rank=0, world_size=world_size,
                workers=workers)
    return shard_set


def write_index_for(spec: str, out: str, *, dataset: str = "imagenet", num_classes: int | None = None) -> ShardSet:
    """Count the samples of existing shards (e.g. a community release) once and write an index for them.

    The index lists the shards by absolute path/URL, so ``out`` can live anywhere (even locally for
    remote shards); pass ``out`` as the shard spec afterwards and no rank has to count again.
    """
    shard_set = read_shard_set(spec).with_counts()
    urls = [u if is_remote(u) else os.path.abspath(local_path(u)) for u in shard_set.urls]
    index = {"format": INDEX_FORMAT, "dataset": dataset, "split": None, "num_classes": num_classes,
             "classes": [], "samples": sum(shard_set.counts),
             "shards": [{"name": u, "samples": n} for u, n in zip(urls, shard_set.counts)]}
    tmp = f"{out}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
    os.replace(tmp, out)
    return read_shard_set(out)
