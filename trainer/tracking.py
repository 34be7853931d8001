"""MLflow tracking from rank 0, which never stops training.

Every call is guarded: the first failure (server down, database locked, ...) prints one warning and
turns tracking off for the rest of the run, so a dead tracking server costs seconds, not the job.
HTTP retries are capped (MLflow's default of 7 retries with back-off would stall a step for
minutes) unless the user set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``..._TIMEOUT`` themselves.

URI: ``tracking.uri``, else MLFLOW_TRACKING_URI, else MLflow's own default ``sqlite:///<cwd>/mlflow.db``
(so ``mlflow ui`` started in the same folder shows the run). With a SQLite store the experiment's
artifacts go to ``mlartifacts/`` beside the database file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from trainer.config import TrackingConfig


def resolve_uri(cfg: TrackingConfig) -> str:
    """The tracking URI this run logs to."""
    if cfg.uri:
        uri = cfg.uri
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # a relative sqlite path: make it absolute so every process and `mlflow ui` agree
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).resolve()}"
    return uri


def default_run_name(model: str, task: str, world_size: int) -> str:
    """``<model>-<task>-w<world size>-<6 hex>``: what ran, and a suffix that keeps runs apart.

    MLflow would otherwise pick a random two-word name that says nothing and may repeat.
    """
    short = {"classification": "cls", "segmentation": "seg"}.get(task, task)
    return f"{model}-{short}-w{world_size}-{secrets.token_hex(3)}"


def ui_command(uri: str) -> str:
    """The command that shows runs logged to ``uri``."""
    if uri.startswith("http"):
        return f"open {uri}"
    return f"mlflow ui --backend-store-uri {uri}"


class Tracker:
    """Rank-0 MLflow logging; on other ranks (``active=False``) every method is a no-op."""

    def __init__(self, cfg: TrackingConfig, *, active: bool) -> None:
        self.cfg = cfg
        self.active = active and cfg.enabled
        self.uri = resolve_uri(cfg)
        self.run_id: str | None = None
        self._client = None
        self._mlflow = None

    # -------------------------------------------------------------------------------------------
    def _fail(self, what: str, err: BaseException) -> None:
        print(f"[tracking] warning: {what} failed ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); "
              "MLflow tracking is off for the rest of this run, training continues", file=sys.stderr, flush=True)
        self.active = False
        try:
            if self._mlflow is not None and self._mlflow.active_run() is not None:
                self._mlflow.end_run(status="FAILED")
        except Exception:
            pass

    def start(self, params: dict[str, Any], *, run_id: str | None = None, tags: dict[str, str] | None = None,
              run_name: str | None = None) -> str | None:
        """Start (or with ``run_id`` resume) the run and log ``params``; returns the run id.

        A new run is named ``tracking.run_name`` if set, else ``run_name``; a resumed run keeps the
        name it was given when it started.
        """
        if not self.active:
            return None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            self._mlflow = mlflow
            mlflow.set_tracking_uri(self.uri)
            self._client = MlflowClient(self.uri)
            experiment = self._client.get_experiment_by_name(self.cfg.experiment)
            if experiment is None:
                location = None
                if self.uri.startswith("sqlite:///"):
                    location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
                experiment_id = self._client.create_experiment(self.cfg.experiment, artifact_location=location)
            else:
                experiment_id = experiment.experiment_id
            if self.cfg.system_metrics:
                # MLflow samples every 10 s by default and logs nothing for a shorter run.
                mlflow.set_system_metrics_sampling_interval(self.cfg.system_metrics_every_s)
            run = mlflow.start_run(run_id=run_id, experiment_id=None if run_id else experiment_id,
                                   run_name=None if run_id else (self.cfg.run_name or run_name), tags=tags,
                                   log_system_metrics=self.cfg.system_metrics)
            self.run_id = run.info.run_id
            existing = set(run.data.params) if run_id else set()
            fresh = {k: _param(v) for k, v in params.items() if k not in existing}
            if fresh:
                mlflow.log_params(fresh)
        except Exception as err:
            self._fail("starting the MLflow run", err)
            return None
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log finite numeric ``metrics`` at ``step``."""
        if not self.active or self.run_id is None:
            return
        values = {k: float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and math.isfinite(float(v))}
        if not values:
            return
        try:
            self._mlflow.log_metrics(values, step=step)
        except Exception as err:
            self._fail("logging metrics", err)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if not self.active or self.run_id is None:
            return
        try:
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)
        except Exception as err:
            self._fail(f"uploading artifact {path}", err)

    def log_text(self, text: str, name: str) -> None:
        """Store ``text`` as artifact file ``name`` (e.g. "config/resolved.yaml")."""
        if not self.active or self.run_id is None:
            return
        try:
            self._mlflow.log_text(text, name)
        except Exception as err:
            self._fail(f"uploading {name}", err)

    def log_figure(self, figure, name: str) -> None:
        """Store a matplotlib figure as artifact ``name`` (a .png path)."""
        if not self.active or self.run_id is None:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(name).name
                figure.savefig(path, dpi=100, bbox_inches="tight")
                self._mlflow.log_artifact(str(path), artifact_path=str(Path(name).parent) or None)
        except Exception as err:
            self._fail(f"uploading figure {name}", err)

    def log_json(self, data: Any, name: str) -> None:
        """Store ``data`` as JSON artifact file ``name`` (e.g. "plots/convergence_step0000010.json")."""
        self.log_text(json.dumps(data, indent=1), name)

    @property
    def run_name(self) -> str | None:
        """The MLflow run's name (None when tracking is off)."""
        if not self.active or self.run_id is None:
            return None
        try:
            return self._client.get_run(self.run_id).info.run_name
        except Exception as err:
            self._fail("reading the run name", err)
            return None

    def set_tag(self, key: str, value: str) -> None:
        if not self.active or self.run_id is None:
            return
        try:
            self._mlflow.set_tag(key, value)
        except Exception as err:
            self._fail("setting a tag", err)

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if not self.active or self.run_id is None:
            return
        try:
            self._mlflow.end_run(status=status)
        except Exception as err:
            self._fail("closing the run", err)


def _param(value: Any) -> str:
    """A param as MLflow shows it: floats to 6 significant digits (not ``5.337782855319162e-08``)."""
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (list, tuple)):
        text = "[" + ", ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in value) + "]"
    else:
        text = "null" if value is None else str(value)
    return text[:6000]  # MLflow's limit on a param value
