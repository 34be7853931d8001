"""Which config changes a resume may carry, and which break it.

A resume continues *the same run*. Keys that change what the saved tensors mean (model shape,
optimizer type, precision, ZeRO layout) or what the data position means (dataset, batch size,
seed, accumulation) are BREAKING: resuming is refused with their names. Keys that only change how
long or how visibly the run goes are SAFE. Anything else is allowed with a warning that the
resumed run is no longer bitwise the uninterrupted one.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer.config.loader import flatten_config
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

# Prefixes: "model." covers every model key.
BREAKING_PREFIXES = (
    "model.",
    "data.dataset", "data.image_size", "data.crop_size", "data.batch_size",
    "train.seed", "train.grad_accum_steps",
    "optim.name",
    "deepspeed.zero_stage", "deepspeed.precision",
)
# model.init_from only matters when a run starts from scratch.
BREAKING_EXCEPTIONS = ("model.init_from",)
SAFE_PREFIXES = (
    "train.max_steps", "train.eval_every", "train.log_every", "train.inject_nan_at_step",
    "train.max_bad_steps", "train.on_divergence",
    "checkpoint.", "tracking.",
    "data.workers", "data.val_shards", "data.eval_batch_size", "data.eval_max_batches", "data.eval_resize",
    "data.train_shards",  # the same shards may move to another mount; the dataset name is checked
)


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def _defaults() -> dict[str, Any]:
    from trainer.config import Config, config_to_dict

    return flatten_config(config_to_dict(Config()))


def classify_changes(saved_config: dict[str, Any], config: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(breaking keys, other unsafe-but-allowed keys)`` that differ between the two configs.

    A key the saved config does not have (a field added to the schema since) counts as unchanged
    while it holds its default.
    """
    saved, now = flatten_config(saved_config), flatten_config(config)
    defaults = _defaults()
    breaking, other = [], []
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) == now.get(key):
            continue
        if key not in saved and key in defaults and now.get(key) == defaults[key]:
            continue
        if _matches(key, BREAKING_PREFIXES) and key not in BREAKING_EXCEPTIONS:
            breaking.append(key)
        elif not _matches(key, SAFE_PREFIXES) and key not in BREAKING_EXCEPTIONS:
            other.append(key)
    return breaking, other


def check_compatible(saved_config: dict[str, Any], config: dict[str, Any]) -> None:
    """Raise ``TrainerError`` naming the keys when ``config`` cannot resume ``saved_config``'s run."""
    breaking, other = classify_changes(saved_config, config)
    if breaking:
        saved, now = flatten_config(saved_config), flatten_config(config)
        detail = "; ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in breaking)
        raise TrainerError(
            f"cannot resume: the config changed in ways a checkpoint cannot follow ({detail}). Restore "
            "these keys, or start a new run with another checkpoint.dir (or, keeping this one, "
            "checkpoint.resume=never with checkpoint.move_other_runs_aside=true: the old checkpoints are moved "
            "to <checkpoint.dir>/set-aside/, not deleted).")
    if other:
        log.warning("resuming with changed keys %s: allowed, but the run will differ from an "
                    "uninterrupted one", ", ".join(other))
