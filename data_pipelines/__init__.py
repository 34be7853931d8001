"""Shard writers, streaming loaders and synthetic data for ImageNet and Cityscapes.

The API other packages call (names are stable; everything is importable from ``data_pipelines``)::

    build_train_stream(dataset, shards, *, batch_size, workers, rank, world_size, seed, image_size,
                       crop_size=None, scale_range=(0.5, 2.0), crop_scale=(0.08, 1.0), augment=True,
                       shuffle_buffer=1000, max_bad_fraction=0.01, eval_resize=None, with_keys=False,
                       global_batch=None, streams=None) -> TrainStream

        ``dataset`` is "imagenet" or "cityscapes"; ``shards`` a directory written by ``mdeq shards``
        (its ``index.json`` is read), a directory of ``*.tar`` in the community layout, a brace
        pattern (``/data/train-{000000..000127}.tar``) or a URL (http(s)://, anything fsspec opens;
        ``http://host/dir/`` reads ``http://host/dir/index.json``).
        ``iter(stream)`` yields ``(images, targets)`` forever, epoch after epoch:
          images  (B, 3, H, W) float32, normalized with the ImageNet mean/std;
          targets (B,) int64 class ids (ImageNet) or (B, H, W) int64 train ids, 255 = ignore (Cityscapes).
        (``with_keys=True`` adds a third element, the list of sample keys: for tests and debugging.)
        ``global_batch`` (default ``world_size × batch_size``): samples per optimizer step over all
        ranks; each rank yields ``global_batch / (world_size × batch_size)`` micro-batches of each.
        ``streams``: canonical streams (default: largest divisor of ``global_batch`` up to 64). The
        order depends on (seed, shards, global_batch, streams) only, never on ranks or workers.
        ``stream.steps_per_epoch``  micro-batches per epoch, identical on every rank
        (``stream.global_steps_per_epoch`` global batches);
        ``stream.epoch``, ``stream.step_in_epoch``  position of the next micro-batch;
        ``stream.bad_samples``, ``stream.samples_seen``  counters for logging;
        ``stream.state_dict()`` -> small JSON-able, layout-free dict; ``stream.load_state_dict(d)``
          before iterating: the resumed stream yields exactly the global batches an uninterrupted one
          would have, also on another number of ranks or workers (same seed, shards, global batch,
          streams); see docs/data.md for what happens when those change.
        Raises ``DataError`` (one clear message) for unusable shards, a layout the canonical streams
        cannot serve (see ``data_pipelines.layout``), or more bad samples than ``max_bad_fraction``.

    build_eval_loader(dataset, shards, *, batch_size, workers, rank, world_size, image_size,
                      eval_resize=None) -> EvalLoader
        An iterable of ``(images, targets)`` that yields every sample exactly once across ranks and
        the SAME number of batches on every rank (``len(loader)``); padding samples carry target -1
        (ImageNet) or an all-255 label map (Cityscapes), so metrics must ignore them
        (``loader.num_samples`` is this rank's count of real samples).

    list_shards(spec) -> list[str]          the shard URLs/paths a spec names (sorted, expanded)
    read_shard_set(spec) -> ShardSet        shards, per-shard sample counts, classes, dataset
    num_classes_of(spec) -> int | None      classes (ImageNet) or 19 (Cityscapes); None for shards
                                            without an index (community layout: set model.num_classes)
    check_readers(spec, world_size, workers, *, batch_size=None, global_batch=None, streams=None) -> ShardSet
        raises DataError when the shards are unusable or (given batch_size) the layout cannot be
        served by the canonical streams (the launcher's and trainer's preflight).

    synth_imagenet(out, *, classes, train_per_class, val_per_class, size=(32, 32), seed=0, val_layout="flat")
    synth_cityscapes(out, *, train, val, size=(256, 128), seed=0)
        write synthetic data in the raw on-disk layouts (``mdeq synth``).
    write_imagenet_shards(src, out, *, split, samples_per_shard=1000, workers=1, ...) -> ShardSet
    write_cityscapes_shards(src, out, *, split, samples_per_shard=100, workers=1, ...) -> ShardSet
        crash-safe, restartable conversion of the raw layouts to shards (``mdeq shards``).

    DataError                               every user-caused data error
    IGNORE_INDEX = 255, CITYSCAPES_CLASSES (19 train-id names), IMAGENET_MEAN, IMAGENET_STD

Nothing heavy is imported until a name is used, so ``import data_pipelines`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from data_pipelines.errors import DataError

# public name -> module that defines it (imported on first use)
_EXPORTS: dict[str, str] = {
    "build_train_stream": "data_pipelines.stream",
    "TrainStream": "data_pipelines.stream",
    "build_eval_loader": "data_pipelines.evaluation",
    "EvalLoader": "data_pipelines.evaluation",
    "list_shards": "data_pipelines.shards.index",
    "read_shard_set": "data_pipelines.shards.index",
    "num_classes_of": "data_pipelines.shards.index",
    "check_readers": "data_pipelines.shards.index",
    "ShardSet": "data_pipelines.shards.index",
    "synth_imagenet": "data_pipelines.synth.imagenet",
    "synth_cityscapes": "data_pipelines.synth.cityscapes",
    "write_imagenet_shards": "data_pipelines.shards.imagenet",
    "write_cityscapes_shards": "data_pipelines.shards.cityscapes",
    "IGNORE_INDEX": "data_pipelines.labels",
    "CITYSCAPES_CLASSES": "data_pipelines.labels",
    "IMAGENET_MEAN": "data_pipelines.transforms",
    "IMAGENET_STD": "data_pipelines.transforms",
}

__all__ = ["DataError", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'data_pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(module_name), name)
