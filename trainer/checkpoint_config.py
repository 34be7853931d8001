"""The resolved config a checkpoint was trained with, so ``mdeq eval`` / ``mdeq predict`` need no ``--config``.

Every commit marker (``COMMITTED.json``) stores the run's resolved config. ``--checkpoint`` may name
the run's ``checkpoint.dir`` (the newest committed step's config is used), one ``step_*`` directory,
or a ``model.pt`` inside one. ``--set`` overrides apply on top, as they would on a YAML file.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.config import Config, load_config
from trainer.config.loader import apply_override, config_from_dict
from trainer.errors import TrainerError


def _marker_dir(path: Path) -> Path | None:
    """The step directory whose marker describes ``path`` (None when there is none)."""
    from trainer.checkpoint.store import MARKER, is_committed, list_tag_dirs

    if path.is_file():
        path = path.parent
    if (path / MARKER).is_file():
        return path
    for _step, tag_dir in list_tag_dirs(path):
        if is_committed(tag_dir):
            return tag_dir
    return None


def saved_config(checkpoint: str | Path) -> tuple[dict[str, Any], Path]:
    """(resolved config dict, step directory) of the checkpoint ``checkpoint`` names; TrainerError otherwise."""
    from trainer.checkpoint.store import InvalidCheckpoint, read_marker

    path = Path(checkpoint)
    if not path.exists():
        raise TrainerError(f"checkpoint {path} does not exist: give a checkpoint directory written by `mdeq train` "
                           "(its checkpoint.dir, or one step_* directory in it)")
    tag_dir = _marker_dir(path)
    if tag_dir is None:
        raise TrainerError(f"{path} holds no committed checkpoint (no step_*/COMMITTED.json), so its config is "
                           "unknown: pass the run's recipe with --config (and its --set overrides)")
    try:
        marker = read_marker(tag_dir)
    except InvalidCheckpoint as why:
        raise TrainerError(f"cannot read the config of {tag_dir}: {why}; pass --config instead") from None
    config = marker.get("config")
    if not isinstance(config, dict):
        raise TrainerError(f"{tag_dir}/COMMITTED.json stores no config: pass the run's recipe with --config")
    return config, tag_dir


def config_for_checkpoint(config_path: str | None, overrides: Sequence[str], checkpoint: str | Path) -> Config:
    """``--config`` with ``--set`` when a recipe is given, else the checkpoint's saved config with ``--set``."""
    if config_path is not None:
        return load_config(config_path, overrides)
    data, _ = saved_config(checkpoint)
    for assignment in overrides:
        data = apply_override(data, assignment)
    return config_from_dict(data)


def check_checkpoint_argument(checkpoint: str | Path) -> None:
    """Refuse a path that names a checkpoint's files other than its weights, saying what to pass."""
    from trainer.checkpoint.store import MARKER

    path = Path(checkpoint)
    if path.is_file() and path.name != "model.pt" and path.parent.joinpath(MARKER).is_file():
        raise TrainerError(f"{path} is one file of the checkpoint {path.parent}, not its weights: pass the "
                           f"directory ({path.parent}), the run's checkpoint.dir ({path.parent.parent}) or "
                           f"{path.parent / 'model.pt'}")


def weights_of(checkpoint: str | Path) -> Path:
    """The ``model.pt`` of the checkpoint ``checkpoint`` names: the file itself, the step directory's, or
    that of the newest committed step under a run's checkpoint.dir."""
    from trainer.transfer import WEIGHTS_NAME, find_weights

    path = Path(checkpoint)
    if path.is_dir():
        tag_dir = _marker_dir(path)
        if tag_dir is not None and (tag_dir / WEIGHTS_NAME).is_file():
            return tag_dir / WEIGHTS_NAME
    return find_weights(path)
