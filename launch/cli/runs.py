"""``mdeq runs [--tracking-uri URI] [--experiment NAME] [--checkpoints DIR] [--json]``: one line per run.

Reads the MLflow store (``--tracking-uri``, else MLFLOW_TRACKING_URI, else ``sqlite:///./mlflow.db``
as ``mdeq train`` would use) and the commit markers under ``--checkpoints``; see ``trainer.runs``.
"""

from __future__ import annotations

import argparse

COLUMNS = ("name", "model", "task", "status", "steps", "committed", "best", "world", "started")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("runs", help="list runs: MLflow runs joined with their committed checkpoints")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db if it exists)")
    parser.add_argument("--experiment", default=None, help="only this MLflow experiment (default: all)")
    parser.add_argument("--checkpoints", default=None, metavar="DIR",
                        help="a checkpoint.dir, or a folder holding several (searched 4 levels deep)")
    parser.add_argument("--json", action="store_true", help="print the runs as one JSON list")
    parser.set_defaults(func=_runs)


def _default_uri() -> str | None:
    import os
    from pathlib import Path

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    local = Path.cwd() / "mlflow.db"
    return f"sqlite:///{local}" if local.is_file() else None


def _cells(row) -> list[str]:
    steps = f"{row.steps_done if row.steps_done is not None else '?'}/" \
            f"{row.steps_planned if row.steps_planned is not None else '?'}"
    best = f"{row.best_metric} {row.best_value:.2f}" if row.best_value is not None else "-"
    return [row.name, row.model or "?", row.task or "?", row.status or "?", steps,
            str(row.committed_step) if row.committed_step is not None else "-", best,
            str(row.world_size) if row.world_size is not None else "?",
            (row.started or "-").replace("+00:00", "Z")]


def _runs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from launch.cli.output import json_stdout
    from launch.errors import LaunchError
    from trainer.runs import list_runs

    uri = args.tracking_uri or _default_uri()
    if uri and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise LaunchError(f"--tracking-uri {uri}: no such SQLite file (give the mlflow.db `mdeq train` wrote)")
    if uri is None and args.checkpoints is None:
        raise LaunchError("no MLflow store here (no ./mlflow.db, MLFLOW_TRACKING_URI unset): pass --tracking-uri "
                          "and/or --checkpoints DIR")
    with json_stdout(args.json) as emit:
        rows = list_runs(uri, args.experiment, Path(args.checkpoints) if args.checkpoints else None)
        if args.json:
            emit([row.as_dict() for row in rows])
            return 0
    if not rows:
        print("no runs found")
        return 0
    table = [list(COLUMNS)] + [_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())
    return 0
