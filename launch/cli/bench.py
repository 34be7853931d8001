"""``mdeq bench KIND``: benchmarks whose figures go into docs/benchmarks.md.

Each kind is a module exposing ``add_arguments(parser)`` and ``run(args) -> dict`` (the figures);
this file prints them as a table or, with ``--json``, as JSON. A kind is listed only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import json

# kind -> module implementing it
BENCHES: dict[str, str] = {}
BENCHES["loader"] = "data_pipelines.bench"  # issue 5: shard stream vs ImageFolder
BENCHES["memory"] = "mdeq.bench.memory"  # issue 4: saved-tensor and solver-buffer bytes vs cap
BENCHES["step"] = "mdeq.bench.step"  # issue 4: training-step time (solve + implicit backward)
BENCHES["solvers"] = "mdeq.bench.solvers"  # issue 4: f-evaluations to residual tolerances per solver
BENCHES["loop"] = "launch.bench_loop"  # issue 6: mdeq train step time vs bench step (loop overhead)


def register(sub: argparse._SubParsersAction) -> None:
    if not BENCHES:
        return
    parser = sub.add_parser("bench", help="run a benchmark (figures for docs/benchmarks.md)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    for kind, module_name in BENCHES.items():
        module = importlib.import_module(module_name)
        kind_parser = kinds.add_parser(kind, help=(module.__doc__ or "").strip().splitlines()[0])
        kind_parser.add_argument("--json", action="store_true", help="print the figures as JSON")
        module.add_arguments(kind_parser)
        kind_parser.set_defaults(func=_runner(module))


def _runner(module):
    def run(args: argparse.Namespace) -> int:
        result = module.run(args)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            _print_human(result)
        return 0

    return run


def _print_human(result) -> None:
    rows = result if isinstance(result, list) else [result]
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
