"""One sweep point: run it, then read what the trainer wrote into one table row."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from launch.sweep.execute import Execution, run_in_process, run_subprocess
from launch.sweep.spec import SweepPoint, SweepSpec
from trainer import build
from trainer.config import Config


def run_point(cfg: Config, config_path: Path, point_dir: Path, spec: SweepSpec, run_id: str | None,
              uri: str | None, in_process: bool) -> Execution:
    """Train the point (subprocess unless ``in_process``)."""
    if in_process:
        if spec.nproc > 1:
            from trainer.errors import TrainerError

            raise TrainerError(f"sweep {spec.name!r} asks for nproc={spec.nproc}: run it without --in-process")
        return run_in_process(cfg, run_id=run_id)
    return run_subprocess(config_path, nproc=spec.nproc, run_id=run_id, tracking_uri=uri,
                          log_path=point_dir / "train.log", timeout_s=spec.timeout_minutes * 60)


def _records(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def _median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and v == v]
    return statistics.median(values) if values else None


def parameter_count(cfg: Config) -> int:
    from mdeq.registry import count_parameters, resolve_spec

    return count_parameters(resolve_spec(cfg.model.name, **build.model_overrides(cfg)))


def planned_peak_bytes(cfg: Config, world_size: int) -> int:
    """``mdeq plan`` for the point's model, batch, resolution, precision, ZeRO stage and solver caps."""
    from mdeq.planner import PlanRequest, plan_memory

    height, width = ((cfg.data.crop_size[1], cfg.data.crop_size[0]) if cfg.data.crop_size is not None
                     else (cfg.data.image_size, cfg.data.image_size))
    request = PlanRequest(model=cfg.model.name, batch_size=cfg.data.batch_size, height=height, width=width,
                          precision=cfg.deepspeed.precision, zero_stage=cfg.deepspeed.zero_stage,
                          world_size=world_size, optimizer=cfg.optim.name, momentum=cfg.optim.momentum,
                          overrides=tuple(sorted(build.model_overrides(cfg).items())),
                          deq=build.deq_options(cfg, build.model_spec(cfg)))
    return plan_memory(request).peak


def collect_row(point: SweepPoint, cfg: Config, point_dir: Path, spec: SweepSpec, execution: Execution,
                nproc: int) -> dict[str, Any]:
    """The table row of a point: status, size, speed, memory, solver iterations, accuracy."""
    run_dir = Path(cfg.train.output_dir)
    records = _records(run_dir / "metrics.jsonl")
    steady = records[1:] if len(records) > 1 else records  # the first interval includes start-up
    final_path = run_dir / "final_metrics.json"
    final = json.loads(final_path.read_text()) if final_path.is_file() else {}
    last = records[-1] if records else {}
    row: dict[str, Any] = {
        "point_id": point.point_id,
        "label": point.label,
        "status": "finished" if execution.ok else "failed",
        "error": execution.error,
        "seconds": round(execution.seconds, 2),
        "params": parameter_count(cfg),
        "images_per_s": _median([r.get("train/images_per_s") for r in steady]),
        "step_s": _median([r.get("train/step_s") for r in steady]),
        "peak_rss_mib": execution.peak_rss_bytes / (1 << 20),
        "f_nfe": last.get("solver/f_nfe"),
        "b_nfe": last.get("solver/b_nfe"),
        "train_loss": last.get("train/loss"),
        "accuracy": final.get("top1", final.get("miou")),
        "eval_f_nfe": final.get("f_nfe"),
        **{f"set.{k}": v for k, v in point.overrides.items()},
    }
    if spec.plan:
        from mdeq.errors import MDEQError

        try:
            row["plan_peak_mib"] = planned_peak_bytes(cfg, nproc) / (1 << 20)
        except MDEQError as err:  # a size the planner cannot take must not lose the trained point
            row["plan_error"] = str(err)
    return row


def add_convergence(row: dict[str, Any], cfg: Config, point_dir: Path, spec: SweepSpec) -> None:
    """Per-branch residual traces of the trained point, and iterations to the sweep's threshold."""
    from launch.sweep.convergence import branch_residual_traces, iterations_to

    traces = branch_residual_traces(cfg, cfg.checkpoint.dir)
    row["branch_residuals"] = traces
    for i, trace in enumerate(traces):
        row[f"final_residual_branch{i}"] = trace[-1] if trace else None
        row[f"iters_to_threshold_branch{i}"] = iterations_to(trace, spec.convergence_threshold)
    (point_dir / "branch_residuals.json").write_text(json.dumps(traces))
