"""Streaming shards from a local HTTP server on 127.0.0.1 (started and stopped by the test)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest

from data_pipelines import build_train_stream, read_shard_set
from tests.data_pipelines.conftest import CLASSES, TRAIN_PER_CLASS, class_of_key, epoch_keys
from trainer.distributed import free_port


@pytest.fixture
def http_root(imagenet_shards):
    """``python -m http.server`` serving the shards' parent directory; yields its base URL."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(imagenet_shards["train"].parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/train/index.json", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("form", ["directory", "brace"])
def test_train_stream_reads_shards_over_http(http_root, form):
    spec = f"{http_root}/train/" if form == "directory" else f"{http_root}/train/train-{{000000..000007}}.tar"
    shard_set = read_shard_set(spec)
    assert len(shard_set.urls) == 8 and all(u.startswith("http://127.0.0.1") for u in shard_set.urls)
    stream = build_train_stream("imagenet", spec, batch_size=4, workers=2, rank=0, world_size=1, seed=0,
                                image_size=16, with_keys=True)
    seen = epoch_keys(stream, class_of_key)
    assert len(seen) == CLASSES * TRAIN_PER_CLASS and set(seen.values()) == {1}
    assert stream.bad_samples == 0
