"""``mdeq train --config F [--set k=v ...]``: train under torchrun, the DeepSpeed launcher or alone.

Exit codes: 0 done; 2 a user error (bad config, data, checkpoint; one message); 3 the divergence
guard gave up (``trainer.fault.DIVERGED_EXIT_CODE``); 75 preempted after a committed checkpoint
(``PREEMPTED_EXIT_CODE``: relaunch the same command to continue).
"""

from __future__ import annotations

import argparse

from launch.cli.config import add_config_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train an MDEQ (DeepSpeed; any number of processes)")
    add_config_args(parser, required=False)
    parser.add_argument("--json", action="store_true", help="print the final metrics as JSON (rank 0)")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import os
    import sys

    from launch.cli.output import json_stdout
    from trainer.config import load_config
    from trainer.fault import DIVERGED_EXIT_CODE, DivergenceError
    from trainer.loop import train

    with json_stdout(args.json) as emit:
        cfg = load_config(args.config, args.overrides)
        try:
            result = train(cfg)
        except DivergenceError as err:
            print(f"mdeq train: error: {err}", file=sys.stderr)
            return DIVERGED_EXIT_CODE
        if os.environ.get("RANK", "0") == "0":
            if args.json:
                emit({"steps": result.steps, **result.final_metrics})
            else:
                from trainer.jsonable import dumps

                print(f"done: {result.steps} steps; final metrics {dumps(result.final_metrics)}; "
                      f"run folder {result.output_dir}; checkpoints {result.checkpoint_dir}", flush=True)
    return 0
