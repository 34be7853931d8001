"""``mdeq eval --checkpoint DIR [--config F] [--set k=v ...] [--json]``: metrics of a checkpoint.

Without ``--config`` the checkpoint's own resolved config is used (``--set`` overrides it), so a
run is evaluated exactly as it was trained. With ``--json`` stdout holds one JSON document and
everything else (DeepSpeed, warnings) goes to stderr.
"""

from __future__ import annotations

import argparse

from launch.cli.config import add_checkpoint_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a checkpoint on data.val_shards")
    add_checkpoint_args(parser)
    parser.add_argument("--json", action="store_true",
                        help="print the metrics as one JSON object on stdout (null for undefined metrics)")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import os

    from launch.cli.output import json_stdout

    with json_stdout(args.json) as emit:
        metrics = _run(args)
        if os.environ.get("RANK", "0") != "0":
            return 0
        if args.json:
            emit(metrics)
        else:
            print_metrics(metrics)
    return 0


def _run(args: argparse.Namespace) -> dict:
    from trainer.checkpoint_config import check_checkpoint_argument, config_for_checkpoint
    from trainer.eval_checkpoint import evaluate_checkpoint

    check_checkpoint_argument(args.checkpoint)
    cfg = config_for_checkpoint(args.config, args.overrides, args.checkpoint)
    return evaluate_checkpoint(cfg, args.checkpoint)


def print_metrics(metrics: dict) -> None:
    """The human-readable form: headline metrics, then per-class IoU, then what the figures cover."""
    keys = ["top1", "top5"] if "top1" in metrics else ["miou", "pixel_acc"]
    head = "  ".join(f"{k} {metrics[k]:.2f}%" for k in keys)
    mode = "unrolled pre-training" if metrics["unrolled"] else "equilibrium"
    print(f"{head}  loss {metrics['loss']:.4f}  (checkpoint step {metrics['step']}, {mode}: "
          f"{metrics.get('checkpoint', '?')})")
    for key in (k for k in metrics if k.startswith("iou/")):
        value = metrics[key]
        shown = f"{value:.2f}" if value == value else "n/a (class in neither labels nor predictions)"
        print(f"  {key}: {shown}")
    if "samples" in metrics:
        line = f"{metrics['samples']} samples evaluated"
        if metrics.get("bad_samples"):
            line += f", {metrics['bad_samples']} undecodable (skipped)"
        if metrics.get("samples_lost"):
            line += (f"; {metrics['samples_lost']} LOST to unreadable shard data (the figures cover the rest; "
                     "re-write the damaged shards with `mdeq shards`)")
        print(line)
