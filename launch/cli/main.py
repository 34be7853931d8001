"""The ``mdeq`` command: the front door that wires the packages together.

Each subcommand lives in its own module under ``launch.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code. Modules import torch, DeepSpeed etc. inside ``func`` so
``mdeq --help`` stays fast. ``COMMANDS`` fixes the order shown by ``mdeq --help``; a name whose
module is missing is an error (a broken install), never a subcommand that silently disappears.

Errors a user can cause (bad config, data, checkpoint, launch arguments) end in exit code 2 and one
message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Order is the order shown by `mdeq --help`.
COMMANDS = [
    "config",  # issue 2
    "models",  # issue 3
    "synth", "shards",  # issue 5
    "train", "eval", "predict", "runs", "quickstart",  # issues 6, 17
    "bench",  # issues 4, 5
    "launch",  # issue 8
    "sweep", "plan",  # issue 9
]


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean 'the user gave us something wrong' (exit 2, message only)."""
    from data_pipelines.errors import DataError
    from launch.errors import LaunchError
    from mdeq.errors import MDEQError
    from trainer.config.errors import ConfigError
    from trainer.errors import TrainerError

    return (ConfigError, MDEQError, DataError, TrainerError, LaunchError)


def _version() -> str:
    """The installed mdeq-train version."""
    from importlib import metadata

    try:
        return metadata.version("mdeq-train")
    except metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdeq",
        description="Train Multiscale Deep Equilibrium Models with DeepSpeed, WebDataset and MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"mdeq {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"launch.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"launch.cli.{name}":
                raise ImportError(f"mdeq: subcommand {name!r} is listed in launch.cli.main.COMMANDS but "
                                  f"launch/cli/{name}.py is missing (a broken install or checkout)") from err
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from launch.host_allocator import tune_host_allocator

    tune_host_allocator()  # before any tensor exists: CPU steps otherwise page-fault their temporaries
    try:
        return int(args.func(args) or 0)
    except user_error_types() as err:
        print(f"mdeq {args.command}: error: {err}", file=sys.stderr)
        return int(getattr(err, "exit_code", 2))  # e.g. DivergenceError: 3 (see docs/fault-tolerance.md)
    except KeyboardInterrupt:
        print(f"mdeq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
