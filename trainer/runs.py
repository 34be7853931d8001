"""Runs at a glance: MLflow runs joined with the checkpoints they committed.

A row per run: name, model, task, status, steps done / planned, newest committed step, best
evaluation metric, world size, start time. MLflow gives what the tracker logged (tags ``model``,
``task``, ``world_size``; the ``train.max_steps`` param; ``eval/top1`` or ``eval/miou`` and
``train/loss`` histories). Checkpoint markers under ``--checkpoints`` give the newest committed
step and, through the MLflow run id their client state carries, the join; a checkpointed run that
MLflow does not know (tracking off) still gets a row from its marker.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError

METRIC_OF_TASK = {"classification": "top1", "segmentation": "miou"}


@dataclass
class RunRow:
    """One run, as ``mdeq runs`` prints it (None: unknown)."""

    name: str
    run_id: str | None
    model: str | None
    task: str | None
    status: str | None  # MLflow's: RUNNING, FINISHED, FAILED, KILLED; "checkpoint only" without MLflow
    steps_done: int | None
    steps_planned: int | None
    committed_step: int | None
    best_metric: str | None  # "top1" | "miou"
    best_value: float | None
    world_size: int | None
    started: str | None  # ISO 8601, UTC
    checkpoint_dir: str | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CommittedRun:
    """What the newest commit marker of one checkpoint.dir says."""

    checkpoint_dir: Path
    step: int
    run_id: str | None
    config: dict
    world_size: int
    committed_at: float | None


def find_checkpoint_runs(root: Path, max_depth: int = 4) -> list[CommittedRun]:
    """Every checkpoint.dir at or below ``root`` (``step_*`` children) with its newest committed marker."""
    from trainer.checkpoint.store import InvalidCheckpoint, is_committed, list_tag_dirs, read_marker

    if not root.is_dir():
        raise TrainerError(f"--checkpoints {root}: no such directory")
    found: list[CommittedRun] = []
    frontier = [(root, 0)]
    while frontier:
        folder, depth = frontier.pop()
        tags = list_tag_dirs(folder)
        if tags:
            for _step, tag_dir in tags:
                if not is_committed(tag_dir):
                    continue
                try:
                    marker = read_marker(tag_dir)
                except InvalidCheckpoint:
                    continue
                client = marker.get("client_state") or {}
                found.append(CommittedRun(checkpoint_dir=folder, step=int(marker["step"]),
                                          run_id=client.get("mlflow_run_id"), config=marker.get("config") or {},
                                          world_size=int(marker.get("world_size", 0)) or 0,
                                          committed_at=marker.get("committed_at")))
                break
            continue
        if depth < max_depth:
            frontier += [(child, depth + 1) for child in sorted(folder.iterdir()) if child.is_dir()]
    return sorted(found, key=lambda run: str(run.checkpoint_dir))


def _iso(milliseconds: float | None) -> str | None:
    if milliseconds is None:
        return None
    return dt.datetime.fromtimestamp(milliseconds / 1000.0, tz=dt.timezone.utc).isoformat(timespec="seconds")


def _last_step(client, run_id: str, key: str) -> int | None:
    history = client.get_metric_history(run_id, key)
    return max((m.step for m in history), default=None)


def _best(client, run_id: str, key: str) -> float | None:
    values = [m.value for m in client.get_metric_history(run_id, key)]
    return max(values) if values else None


def mlflow_rows(uri: str, experiment: str | None) -> list[RunRow]:
    """Rows of every run in ``experiment`` (all experiments when None) at tracking URI ``uri``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(uri)
        if experiment is not None:
            found = client.get_experiment_by_name(experiment)
            experiments = [found] if found is not None else []
        else:
            experiments = client.search_experiments()
        runs = client.search_runs([e.experiment_id for e in experiments], order_by=["attributes.start_time DESC"],
                                  max_results=1000) if experiments else []
    except MlflowException as err:
        raise TrainerError(f"cannot read runs from the MLflow store {uri}: {str(err).splitlines()[0]}") from None
    rows = []
    for run in runs:
        tags, params = run.data.tags, run.data.params
        task = tags.get("task")
        metric = METRIC_OF_TASK.get(task or "")
        planned = params.get("train.max_steps")
        rows.append(RunRow(
            name=run.info.run_name or run.info.run_id, run_id=run.info.run_id, model=tags.get("model"), task=task,
            status=run.info.status, steps_done=_last_step(client, run.info.run_id, "train/loss"),
            steps_planned=int(planned) if planned and planned.isdigit() else None, committed_step=None,
            best_metric=metric, best_value=_best(client, run.info.run_id, f"eval/{metric}") if metric else None,
            world_size=int(tags["world_size"]) if tags.get("world_size", "").isdigit() else None,
            started=_iso(run.info.start_time), checkpoint_dir=None))
    return rows


def list_runs(uri: str | None, experiment: str | None, checkpoints: Path | None) -> list[RunRow]:
    """MLflow rows (when ``uri``) joined with the checkpoint runs under ``checkpoints`` (when given)."""
    rows = mlflow_rows(uri, experiment) if uri else []
    by_id = {row.run_id: row for row in rows}
    for committed in find_checkpoint_runs(checkpoints) if checkpoints is not None else []:
        row = by_id.get(committed.run_id)
        if row is None:
            config = committed.config
            model, data, train = config.get("model", {}), config.get("data", {}), config.get("train", {})
            task = "segmentation" if data.get("dataset") == "cityscapes" else "classification" if data else None
            row = RunRow(name=str(committed.checkpoint_dir), run_id=committed.run_id, model=model.get("name"),
                         task=task, status="checkpoint only", steps_done=committed.step,
                         steps_planned=train.get("max_steps"), committed_step=None, best_metric=None,
                         best_value=None, world_size=committed.world_size or None,
                         started=None, checkpoint_dir=None)
            rows.append(row)
        row.committed_step = committed.step
        row.checkpoint_dir = str(committed.checkpoint_dir)
        if row.steps_done is None or row.steps_done < committed.step:
            row.steps_done = committed.step
    return rows
