"""Checks that run before any process group, engine or loader exists: user errors fail in seconds.

Each failure is one ``TrainerError`` / ``DataError`` / ``MDEQError`` / ``ConfigError`` message that
says what to change. The result (``Plan``) carries what the checks computed so the loop reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainer import build
from trainer.config import Config
from trainer.errors import TrainerError


@dataclass
class Plan:
    """What the checks established."""

    task: str  # classification | segmentation
    spec: Any  # mdeq.ModelSpec of model.name
    num_classes: int
    batching: build.Batching
    init_from_state: dict | None  # backbone source state dict (model.init_from), loaded tensors-only


def _check_shards(spec: str, key: str, dataset: str, world_size: int, workers: int, layout: dict | None) -> int:
    import data_pipelines as data

    if not spec:
        raise TrainerError(f"{key} is empty: point it at shards written by `mdeq shards` (a directory, brace "
                           f"pattern or URL), e.g. --set {key}=/data/imagenet/train; `mdeq quickstart` makes some")
    shard_set = data.read_shard_set(spec)  # DataError: missing/unusable
    if shard_set.dataset is not None and shard_set.dataset != dataset:
        raise TrainerError(f"{key}={spec} holds {shard_set.dataset} shards but data.dataset={dataset!r}: point "
                           f"{key} at {dataset} shards, or set data.dataset={shard_set.dataset} (with a "
                           f"{'segmentation' if shard_set.dataset == 'cityscapes' else 'classification'} model)")
    if layout is not None:
        data.check_readers(shard_set, world_size, workers, **layout)  # DataError: a layout refused
    return data.num_classes_of(spec)


def _check_gpus_per_node() -> None:
    """One GPU per process: NCCL refuses two ranks on one device."""
    import os

    import torch

    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if torch.cuda.is_available() and per_node > torch.cuda.device_count():
        raise TrainerError(f"{per_node} processes on this node but only {torch.cuda.device_count()} GPU(s) visible: "
                           "start one process per GPU (e.g. torchrun --nproc-per-node "
                           f"{torch.cuda.device_count()}), or hide the GPUs (CUDA_VISIBLE_DEVICES=) to train on CPU")


def preflight(cfg: Config, world_size: int) -> Plan:
    """Validate ``cfg`` for a job of ``world_size`` processes; raises one clear error or returns the plan."""
    from trainer.transfer import read_init_from

    task = build.task_of(cfg)
    spec = build.model_spec(cfg)  # MDEQError listing known names
    if spec.task != task:
        import mdeq

        fitting = [n for n in mdeq.list_models() if mdeq.get_model_spec(n).task == task]
        raise TrainerError(f"model.name={cfg.model.name!r} is a {spec.task} model but data.dataset="
                           f"{cfg.data.dataset!r} needs a {task} model: use one of {', '.join(fitting)}")
    batching = build.batching(cfg, world_size)
    _check_gpus_per_node()
    if cfg.train.max_steps < 1:
        raise TrainerError("train.max_steps must be at least 1 (nothing to train)")
    train_layout = dict(batch_size=cfg.data.batch_size, global_batch=batching.global_batch, streams=cfg.data.streams)
    data_classes = _check_shards(cfg.data.train_shards, "data.train_shards", cfg.data.dataset, world_size,
                                 cfg.data.workers, train_layout)
    _check_shards(cfg.data.val_shards, "data.val_shards", cfg.data.dataset, world_size, cfg.data.workers, None)
    num_classes = cfg.model.num_classes or data_classes
    if num_classes < data_classes and task == "classification":
        raise TrainerError(f"model.num_classes={num_classes} but the training shards have {data_classes} classes: "
                           f"set model.num_classes={data_classes} (or leave it null to follow the data)")
    init_state = read_init_from(cfg.model.init_from) if cfg.model.init_from else None
    if init_state is not None:
        # try the transfer on a shape-only model now, so a checkpoint of another architecture fails here
        import mdeq
        from trainer.transfer import check_transfer

        check_transfer(mdeq.create_model(cfg.model.name, device="meta",
                                         **build.model_overrides(cfg, num_classes)), init_state, cfg.model.init_from)
    return Plan(task=task, spec=spec, num_classes=num_classes, batching=batching, init_from_state=init_state)
