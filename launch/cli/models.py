"""``mdeq models [--json]``: the model zoo with its released recipe values and parameter counts."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="list the model zoo (name, task, branches, channels, parameters)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of objects instead of a table")
    parser.set_defaults(func=_run)


def zoo_rows() -> list[dict]:
    """One dict per registered model: architecture, recipe values and parameter count."""
    from mdeq.registry import count_parameters, get_model_spec, list_models

    rows = []
    for name in list_models():
        spec = get_model_spec(name)
        rows.append({
            "name": name, "task": spec.task, "params": count_parameters(spec),
            "paper_params": spec.paper_params, "branches": spec.num_branches, "channels": list(spec.channels),
            "head_channels": list(spec.head_channels) if spec.head_channels else None,
            "final_channels": spec.final_channels, "width_expansion": spec.width_expansion,
            "num_groups": spec.num_groups, "dropout": spec.dropout, "downsample_times": spec.downsample_times,
            "num_classes": spec.num_classes, "f_max_iter": spec.f_max_iter, "b_max_iter": spec.b_max_iter,
            "stop_mode": spec.stop_mode, "pretrain_steps": spec.pretrain_steps,
            "pretrain_layers": spec.pretrain_layers,
        })
    return rows


def _human(count: int) -> str:
    for unit, scale in (("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _run(args: argparse.Namespace) -> int:
    rows = zoo_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["name", "task", "branches", "channels", "E", "dropout", "F/B cap", "warm-up (layers)",
              "params", "paper"]
    table = [[r["name"], r["task"], str(r["branches"]), ",".join(map(str, r["channels"])),
              str(r["width_expansion"]), f"{r['dropout']:g}", f"{r['f_max_iter']}/{r['b_max_iter']} ({r['stop_mode']})",
              f"{r['pretrain_steps']} ({r['pretrain_layers']})", _human(r["params"]), r["paper_params"] or "-"]
             for r in rows]
    widths = [max(len(line[i]) for line in [header] + table) for i in range(len(header))]
    for line in [header] + table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    return 0
