"""``mdeq train --config F [--set k=v ...]``: train under torchrun, the DeepSpeed launcher or alone."""

from __future__ import annotations

import argparse

from launch.cli.config import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train an MDEQ (DeepSpeed; any number of processes)")
    add_config_args(parser, required=False)
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON (rank 0)")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import json

    from trainer.config import load_config
    from trainer.loop import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    import os

    if os.environ.get("RANK", "0") == "0":
        if args.json:
            print(json.dumps({"steps": result.steps, **result.final_metrics}))
        else:
            print(f"done: {result.steps} steps; final metrics {json.dumps(result.final_metrics)}; "
                  f"run folder {result.output_dir}; checkpoints {result.checkpoint_dir}")
    return 0
