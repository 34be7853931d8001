"""``mdeq eval``: evaluate a trained checkpoint without DeepSpeed (any number of processes).

The weights come from the checkpoint's consolidated ``model.pt`` (written by ``mdeq train`` with
every checkpoint), so evaluation needs neither the training world size nor the optimizer files.
Given a run's ``checkpoint.dir``, the checkpoint is chosen as resume chooses it: the newest committed
one whose files verify (unfinished or damaged newer ones are skipped with a warning); the metrics
name it (``checkpoint``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from trainer import build
from trainer.config import Config
from trainer.distributed import launcher_world_size, setup_distributed, teardown
from trainer.errors import TrainerError
from trainer.evaluate import evaluate
from trainer.transfer import WEIGHTS_NAME, read_weights

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_checkpoint(path: str, *, check_hash: bool = True) -> Path:
    """The weights file to evaluate for ``path``: a run's checkpoint folder (its newest committed
    checkpoint that verifies), one ``step_*`` folder (it must be committed and verify), or a file."""
    from trainer.checkpoint import store

    folder = Path(path)
    if folder.is_dir() and store.list_tag_dirs(folder):
        point, rejected = store.scan(folder, check_hash=check_hash)
        if point is None:
            reasons = "; ".join(f"{d.name}: {why}" for d, why in rejected) or "no step_* folder has a commit marker"
            raise TrainerError(f"--checkpoint {folder}: no committed checkpoint that verifies ({reasons}); give "
                               "another checkpoint folder or a model.pt file")
        folder = Path(point.path)
    elif folder.is_dir() and (store.is_committed(folder) or folder.name.startswith("step_")):
        try:
            store.verify(folder, check_hash=check_hash)
        except store.InvalidCheckpoint as why:
            raise TrainerError(f"--checkpoint {folder} cannot be evaluated: {why}; give its run's checkpoint "
                               "folder to use the newest one that verifies") from None
    if folder.is_dir() and not (folder / WEIGHTS_NAME).is_file() and store.is_committed(folder):
        raise TrainerError(f"{folder} holds no {WEIGHTS_NAME}: it was not written by `mdeq train`")
    return folder / WEIGHTS_NAME if (folder / WEIGHTS_NAME).is_file() else folder


def evaluate_checkpoint(cfg: Config, checkpoint: str) -> dict[str, float | str | bool]:
    """Metrics of the weights in ``checkpoint`` on ``data.val_shards`` (reduced over all ranks), and
    ``checkpoint``: the weights file evaluated (see ``resolve_checkpoint``)."""
    import data_pipelines as data

    task = build.task_of(cfg)
    spec = build.model_spec(cfg)
    if spec.task != task:
        raise TrainerError(f"model.name={cfg.model.name!r} is a {spec.task} model but data.dataset="
                           f"{cfg.data.dataset!r} is {task}")
    if not cfg.data.val_shards:
        raise TrainerError("data.val_shards is empty: point it at validation shards, e.g. --set data.val_shards=DIR")
    data.read_shard_set(cfg.data.val_shards)
    # before any process group: a bad path fails fast
    payload = read_weights(resolve_checkpoint(checkpoint, check_hash=cfg.checkpoint.verify_hash))
    num_classes = cfg.model.num_classes or data.num_classes_of(cfg.data.val_shards)
    layout = setup_distributed(cfg.train.seed, deepspeed_comm=False)  # no engine here: torch's collectives
    try:
        model = build.model_from_weights(cfg, payload, num_classes, spec)
        # as in training: fp32 parameters, bf16/fp16 through autocast
        model.to(layout.device)
        autocast = None if cfg.deepspeed.precision == "fp32" else DTYPES[cfg.deepspeed.precision]
        loader = data.build_eval_loader(cfg.data.dataset, cfg.data.val_shards,
                                        **build.eval_loader_args(cfg, layout.rank, layout.world_size))
        # the mode the checkpoint's last step trained in, as the training run's own evaluation did
        steps_done = int(payload.get("step", -1))
        unrolled = build.evaluates_unrolled(steps_done, build.pretrain_steps(cfg, spec),
                                            bool(cfg.model.weight_tied_layers))
        result = evaluate(model, loader, task=task, num_classes=num_classes, device=layout.device,
                          dtype=torch.float32, pretrain=unrolled,
                          max_batches=cfg.data.eval_max_batches, autocast_dtype=autocast)
        metrics = dict(result.metrics)
        metrics["step"] = steps_done
        metrics["unrolled"] = unrolled  # the checkpoint was still in unrolled pre-training
        metrics["checkpoint"] = payload["path"]
        return metrics
    finally:
        teardown()


def world_size() -> int:
    return launcher_world_size()
