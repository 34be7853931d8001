"""``mdeq sweep --config configs/sweeps/NAME.yaml``: a grid of training runs under one MLflow parent.

Points run one after another (each as ``mdeq train`` in a subprocess, or in this process with
``--in-process``); a point that finished earlier is skipped, so re-running the command resumes the
sweep. The summary table (CSV, markdown) and plots land in the output folder and on the parent run.
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sweep", help="run a grid of training runs as nested MLflow runs (resumable)")
    parser.add_argument("--config", required=True, help="sweep file (see configs/sweeps/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a training config key in every point, e.g. --set train.max_steps=2")
    parser.add_argument("--out", help="output folder (default: the sweep file's output_dir)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: the recipe's tracking.uri)")
    parser.add_argument("--in-process", action="store_true",
                        help="train every point in this process instead of a `mdeq train` subprocess")
    parser.add_argument("--no-plan", action="store_true", help="leave out the memory planner's column")
    parser.add_argument("--list", action="store_true", help="print the resolved points and exit")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from launch.sweep import expand_points, load_sweep, run_sweep

    if args.list:
        spec, root = load_sweep(args.config)
        for point in expand_points(spec, root, tuple(args.overrides)):
            print(f"{point.point_id}  {point.label}")
        return 0
    result = run_sweep(args.config, overrides=tuple(args.overrides), output_dir=args.out,
                       in_process=args.in_process, tracking_uri=args.tracking_uri,
                       plan=False if args.no_plan else None)
    print(result.table_md.read_text(), end="")
    print(f"summary: {result.table_csv}, {result.table_md}; plots: {result.output_dir / 'plots'}")
    return 1 if result.failed else 0
