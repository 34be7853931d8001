"""Opening shard URLs (local paths, http(s), anything fsspec opens) and reading tar samples.

Tar members are grouped into samples the WebDataset way: consecutive members sharing a key (the
path up to the first dot of the file name) form one sample; the rest of the name is the field
("jpg", "cls", "image.png"). Only the fields a caller asks for are read; everything else (a
``.pickle``/``.pyd`` member included) is skipped unread, so nothing is ever unpickled.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from data_pipelines.errors import DataError

OPEN_RETRIES = 3  # attempts to open a shard before it is reported as unreadable


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def open_url(url: str, timeout: float = 60.0) -> io.BufferedIOBase:
    """Open a shard for streaming reads (one attempt). Raises OSError on failure."""
    if url.startswith(("http://", "https://")):
        # urllib, not fsspec's aiohttp: plain blocking sockets behave in forked loader workers
        return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - URLs come from the user's config
    if is_remote(url):
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(local_path(url), "rb")


def open_with_retries(url: str, retries: int = OPEN_RETRIES, backoff_s: float = 0.5) -> io.BufferedIOBase:
    """Open ``url``, retrying transient failures with a short backoff; OSError after the last try."""
    last: Exception | None = None
    for attempt in range(retries):
        try:
            return open_url(url)
        except (OSError, ValueError) as err:  # urllib raises URLError (an OSError); fsspec ValueError
            last = err
            if attempt + 1 < retries and is_remote(url):
                time.sleep(backoff_s * (attempt + 1))
            elif not is_remote(url) and not os.path.exists(local_path(url)):
                break  # a missing local file will not appear by waiting
    raise OSError(f"cannot open shard {url} after {retries} attempts: {last}")


def read_bytes(url: str) -> bytes:
    with open_with_retries(url) as f:
        return f.read()


@dataclass
class RawSample:
    """One sample's undecoded fields, as read from a shard."""

    key: str
    url: str
    fields: dict[str, bytes] = field(default_factory=dict)


class TruncatedShard(Exception):
    """The tar ended in the middle of a member or header (the samples before it were yielded)."""


def split_member_name(name: str) -> tuple[str, str]:
    """'dir/n01_123.cls' -> ('dir/n01_123', 'cls'); 'a_1.image.png' -> ('a_1', 'image.png')."""
    directory, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{directory}/{stem}" if directory else stem
    return key, ext.lower() if dot else ""


def iter_tar_samples(stream: io.BufferedIOBase, url: str, wanted: frozenset[str]) -> Iterator[RawSample]:
    """Yield samples of a tar stream in file order, reading only the ``wanted`` fields.

    Raises TruncatedShard if the archive is cut short or its headers are corrupt.
    """
    current: RawSample | None = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, ext = split_member_name(member.name)
                if key.rpartition("/")[2].startswith((".", "__")):
                    continue  # hidden files and webdataset's __key__-style members
                if current is None or key != current.key:
                    if current is not None:
                        yield current
                    current = RawSample(key, url)
                if ext in wanted:
                    data = archive.extractfile(member)
                    content = data.read() if data is not None else b""
                    if len(content) != member.size:
                        raise TruncatedShard(f"member {member.name} cut short")
                    current.fields[ext] = content
    except (tarfile.TarError, EOFError, OSError, ValueError) as err:
        # yield nothing of the sample being read when it broke: it may be incomplete
        raise TruncatedShard(f"{url}: {err}") from err
    if current is not None:
        yield current


def count_samples(url: str) -> int:
    """Number of samples (distinct consecutive keys) in a shard; reads only headers of local files."""
    path = local_path(url)
    try:
        if not is_remote(url) and path.endswith(".tar"):
            with tarfile.open(path, mode="r:") as archive:  # seekable: skips member data
                names = [m.name for m in archive.getmembers() if m.isfile()]
        else:
            with open_with_retries(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as archive:
                names = [m.name for m in archive if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot read shard {url} to count its samples: {err}. "
                        "Re-write it with `mdeq shards` or remove it from the shard list.") from err
    count, previous = 0, None
    for name in names:
        key, _ = split_member_name(name)
        if key.rpartition("/")[2].startswith((".", "__")):
            continue
        if key != previous:
            count, previous = count + 1, key
    return count
