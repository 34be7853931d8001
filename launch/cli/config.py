"""``mdeq config show|validate``: print or check a resolved config."""

from __future__ import annotations

import argparse


def add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The ``--config F [--set k=v ...]`` pair every config-driven subcommand takes."""
    parser.add_argument("--config", required=required, help="YAML recipe (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set train.max_steps=5 (repeatable)")


def add_checkpoint_args(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint DIR`` with an optional ``--config``/``--set``: commands that run a trained model."""
    add_config_args(parser, required=False)
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint dir of a run (its newest committed step is used), one step_* dir or a "
                             "model.pt file; its saved config is used unless --config is given")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="show or validate a resolved config")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    show = actions.add_parser("show", help="print the resolved config as YAML")
    add_config_args(show)
    show.set_defaults(func=_show)
    validate = actions.add_parser("validate", help="check a config and exit 0 if it is valid")
    add_config_args(validate)
    validate.set_defaults(func=_validate)


def _show(args: argparse.Namespace) -> int:
    from trainer.config import dump_config, load_config

    print(dump_config(load_config(args.config, args.overrides)), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from trainer.config import load_config

    load_config(args.config, args.overrides)
    print(f"{args.config}: valid")
    return 0
