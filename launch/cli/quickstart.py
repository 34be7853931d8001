"""``mdeq quickstart``: synthetic data -> 2-process DeepSpeed training of `tiny` -> eval -> summary."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("quickstart", help="train the tiny MDEQ on synthetic data with 2 processes (CPU is fine)")
    parser.add_argument("--out", default="runs/quickstart", help="run folder (default: runs/quickstart)")
    parser.add_argument("--nproc", type=int, default=2, help="training processes (default 2)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of configs/quickstart.yaml (repeatable)")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.set_defaults(func=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    import json

    from launch.quickstart import QuickstartOptions, quickstart

    summary = quickstart(QuickstartOptions(out=Path(args.out), nproc=args.nproc, overrides=tuple(args.overrides)))
    if args.json:
        print(json.dumps(summary))
    return 0
