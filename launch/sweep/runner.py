"""``run_sweep``: every point of a sweep file as a nested MLflow run, resumable, with a summary.

Layout of ``output_dir``::

    sweep_state.json             parent run id, tracking URI, experiment (reused on re-runs)
    data/                        synthetic shards, when the sweep file asks for them
    points/<id>/config.yaml      the point's resolved config; its run folder and checkpoints live here
    points/<id>/result.json      written only when the point finished: the resume marker
    summary.csv, summary.md      one row per point
    plots/*.png                  params vs images/s, peak memory, solver iterations, accuracy

A point whose ``result.json`` exists is skipped; an interrupted point is run again and resumes from
its own last committed checkpoint into the same child run (``mdeq train`` resumes by itself).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launch.sweep import report
from launch.sweep.spec import SweepPoint, SweepSpec, expand_points, load_sweep
from trainer.config import Config, dump_config


@dataclass
class SweepResult:
    """What a sweep did: rows of the table, where the summary went, and the parent run."""

    rows: list[dict[str, Any]]
    output_dir: Path
    table_csv: Path
    table_md: Path
    plots: list[Path]
    parent_run_id: str | None
    tracking_uri: str | None
    ran: list[str] = field(default_factory=list)  # point ids run by this call
    skipped: list[str] = field(default_factory=list)  # point ids already finished

    @property
    def failed(self) -> list[str]:
        return [r["point_id"] for r in self.rows if r.get("status") != "finished"]


class _Tracking:
    """The sweep's own MLflow calls (parent run, child runs, artifacts) through one client."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = None
            if uri.startswith("sqlite:///"):  # as trainer.tracking does: artifacts beside the database
                location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        else:
            self.experiment_id = found.experiment_id

    def run_exists(self, run_id: str | None) -> bool:
        if not run_id:
            return False
        try:
            self.client.get_run(run_id)
            return True
        except Exception:
            return False

    def parent(self, run_id: str | None, spec: SweepSpec, sweep_file: Path, points: list[SweepPoint]) -> str:
        if self.run_exists(run_id):
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=spec.name,
                                     tags={"sweep.name": spec.name, "sweep.file": str(sweep_file),
                                           "sweep.kind": spec.kind, "mlflow.note.content": spec.description})
        self.client.log_param(run.info.run_id, "sweep.points", len(points))
        self.client.log_param(run.info.run_id, "sweep.grid", json.dumps(spec.grid)[:6000])
        if spec.variants:
            self.client.log_param(run.info.run_id, "sweep.variants", ",".join(v.name for v in spec.variants))
        return run.info.run_id

    def child(self, parent_id: str, spec: SweepSpec, point: SweepPoint, existing: str | None) -> str:
        if self.run_exists(existing):
            return existing
        tags = {"mlflow.parentRunId": parent_id, "sweep.name": spec.name, "sweep.point_id": point.point_id,
                "sweep.label": point.label}
        tags.update({f"sweep.set.{k}": json.dumps(v)[:5000] for k, v in point.overrides.items()})
        run = self.client.create_run(self.experiment_id, run_name=f"{spec.name}: {point.label}", tags=tags)
        return run.info.run_id

    def finish_child(self, run_id: str, metrics: dict[str, float], ok: bool) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(float(value)):
                self.client.log_metric(run_id, key, float(value))
        status = self.client.get_run(run_id).info.status
        if not ok or status in ("RUNNING", "SCHEDULED"):
            self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def finish_parent(self, run_id: str, files: list[Path], ok: bool) -> None:
        for path in files:
            folder = "plots" if path.suffix == ".png" else "summary"
            self.client.log_artifact(run_id, str(path), artifact_path=folder)
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def _point_config(point: SweepPoint, point_dir: Path, spec: SweepSpec, uri: str | None) -> Config:
    """The point's config with its own run folder, checkpoints and tracking destination."""
    cfg = point.config
    train = dataclasses.replace(cfg.train, output_dir=str(point_dir / "run"))
    checkpoint = dataclasses.replace(cfg.checkpoint, dir=str(point_dir / "checkpoints"))
    tracking = dataclasses.replace(cfg.tracking, uri=uri, run_name=f"{spec.name}: {point.label}",
                                   enabled=uri is not None)
    return dataclasses.replace(cfg, train=train, checkpoint=checkpoint, tracking=tracking)


def _ensure_synthetic(spec: SweepSpec, out_dir: Path) -> tuple[str, ...]:
    """Write the sweep's synthetic shards once; the overrides that point every config at them."""
    if spec.synthetic is None:
        return ()
    import data_pipelines as data

    syn = spec.synthetic
    root = out_dir / "data"
    train_dir, val_dir = root / "shards" / "train", root / "shards" / "val"
    if not (train_dir / "index.json").is_file() or not (val_dir / "index.json").is_file():
        data.synth_imagenet(root / "raw", classes=syn.classes, train_per_class=syn.train_per_class,
                            val_per_class=syn.val_per_class, size=syn.size, seed=syn.seed)
        data.write_imagenet_shards(root / "raw", train_dir, split="train", samples_per_shard=syn.samples_per_shard,
                                   progress=False)
        data.write_imagenet_shards(root / "raw", val_dir, split="val", samples_per_shard=syn.samples_per_shard,
                                   progress=False)
    return ("data.dataset=imagenet", f"data.train_shards={train_dir}", f"data.val_shards={val_dir}",
            f"model.num_classes={syn.classes}")


def run_sweep(sweep_file: str | Path, *, overrides: tuple[str, ...] = (), output_dir: str | Path | None = None,
              in_process: bool = False, tracking_uri: str | None = None, plan: bool | None = None,
              log=print) -> SweepResult:
    """Run (or resume) the sweep in ``sweep_file``; see the module doc for what lands where.

    ``plan`` (when not None) overrides the sweep file's ``plan`` (the planner column costs a dry run
    per point).
    """
    from trainer.tracking import resolve_uri

    spec, root = load_sweep(sweep_file)
    if plan is not None:
        spec.plan = plan
    out_dir = Path(output_dir or spec.output_dir or f"runs/sweeps/{spec.name}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    # validate every point before writing data or touching MLflow
    expand_points(spec, root, tuple(overrides))
    points = expand_points(spec, root, tuple(overrides), base_overrides=_ensure_synthetic(spec, out_dir))
    state_path = out_dir / "sweep_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    base_tracking = points[0].config.tracking
    uri = None
    tracking = None
    if base_tracking.enabled:
        uri = resolve_uri(dataclasses.replace(base_tracking, uri=tracking_uri or state.get("tracking_uri")
                                              or base_tracking.uri))
        tracking = _Tracking(uri, base_tracking.experiment)
    parent_id = tracking.parent(state.get("parent_run_id"), spec, Path(sweep_file).resolve(), points) \
        if tracking else None
    state_path.write_text(json.dumps({"parent_run_id": parent_id, "tracking_uri": uri,
                                      "experiment": base_tracking.experiment, "sweep_file": str(sweep_file)}))
    log(f"sweep {spec.name}: {len(points)} point(s) -> {out_dir}" + (f"; parent run {parent_id} at {uri}" if uri else ""))
    rows, ran, skipped = [], [], []
    curves: dict[str, list[list[float]]] = {}
    for point in points:
        point_dir = out_dir / "points" / point.point_id
        done = point_dir / "result.json"
        if done.is_file():
            row = json.loads(done.read_text())
            if row.get("status") == "finished":
                log(f"  [{point.index + 1}/{len(points)}] {point.label}: finished earlier, skipped")
                skipped.append(point.point_id)
                rows.append(row)
                if "branch_residuals" in row:
                    curves[point.label] = row["branch_residuals"]
                continue
        point_dir.mkdir(parents=True, exist_ok=True)
        cfg = _point_config(point, point_dir, spec, uri)
        config_path = point_dir / "config.yaml"
        config_path.write_text(dump_config(cfg))
        child_file = point_dir / "mlflow_run_id"
        child_id = tracking.child(parent_id, spec, point, child_file.read_text().strip()
                                  if child_file.is_file() else None) if tracking else None
        if child_id:
            child_file.write_text(child_id)
        log(f"  [{point.index + 1}/{len(points)}] {point.label}: running" + (f" (run {child_id})" if child_id else ""))
        from launch.sweep.collect import collect_row, run_point

        execution = run_point(cfg, config_path, point_dir, spec, child_id, uri, in_process)
        row = collect_row(point, cfg, point_dir, spec, execution, nproc=spec.nproc)
        if spec.kind == "convergence" and execution.ok:
            from launch.sweep.collect import add_convergence

            add_convergence(row, cfg, point_dir, spec)
            curves[point.label] = row.get("branch_residuals", [])
        if tracking and child_id:
            tracking.finish_child(child_id, {f"sweep/{k}": v for k, v in row.items() if k not in ("point_id",)},
                                  execution.ok)
        row["mlflow_run_id"] = child_id
        if execution.ok:
            done.write_text(json.dumps(row, indent=2, default=str))
        else:
            log(f"    failed: {execution.error}")
        ran.append(point.point_id)
        rows.append(row)
    extra = sorted({k for r in rows for k in r if k.startswith(("final_residual_branch", "iters_to_threshold_branch"))})
    table_csv, table_md = report.write_table(rows, out_dir, extra_columns=extra)
    plots = report.write_plots(rows, out_dir / "plots", spec.name)
    if curves:
        plots.append(report.write_convergence_plot(curves, out_dir / "plots" / "branch_residual_vs_iteration.png",
                                                   f"{spec.name}: per-branch residual vs solver iteration"))
    ok = all(r.get("status") == "finished" for r in rows)
    if tracking and parent_id:
        tracking.finish_parent(parent_id, [table_csv, table_md, *plots], ok)
    log(f"sweep {spec.name}: {len(ran)} run, {len(skipped)} skipped, "
        f"{sum(r.get('status') != 'finished' for r in rows)} failed; table {table_md}")
    return SweepResult(rows=rows, output_dir=out_dir, table_csv=table_csv, table_md=table_md, plots=plots,
                       parent_run_id=parent_id, tracking_uri=uri, ran=ran, skipped=skipped)
