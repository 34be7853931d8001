"""``mdeq eval --config F --checkpoint DIR [--set k=v ...] [--json]``: metrics of a checkpoint."""

from __future__ import annotations

import argparse

from launch.cli.config import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("eval", help="evaluate a checkpoint on data.val_shards")
    add_config_args(parser, required=False)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint dir (checkpoint.dir of a run, or one step's dir) or a model.pt file")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    import json
    import os
    import sys

    from trainer.config import load_config
    from trainer.eval_checkpoint import evaluate_checkpoint

    cfg = load_config(args.config, args.overrides)
    metrics = evaluate_checkpoint(cfg, args.checkpoint)
    if os.environ.get("RANK", "0") != "0":
        return 0
    if args.json:
        print(json.dumps(metrics), flush=True)
    else:
        keys = ["top1", "top5"] if "top1" in metrics else ["miou", "pixel_acc"]
        head = "  ".join(f"{k} {metrics[k]:.2f}%" for k in keys)
        mode = "warm-up, f unrolled" if metrics["warmup"] else "equilibrium"
        print(f"{head}  loss {metrics['loss']:.4f}  (checkpoint step {metrics['step']}, {mode}: "
              f"{metrics['checkpoint']})")
        for key in sorted((k for k in metrics if k.startswith("iou/")), key=lambda k: int(k.split("/")[1])):
            print(f"  {key}: {metrics[key]:.2f}")
    sys.stdout.flush()
    return 0
