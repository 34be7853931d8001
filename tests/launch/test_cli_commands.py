"""The ``mdeq`` front door registers every subcommand it lists, and a missing one is an error."""

from __future__ import annotations

import pytest

import launch.cli.main as cli


def test_every_listed_subcommand_is_registered_in_order():
    parser = cli.build_parser()
    subcommands = next(action for action in parser._actions if action.dest == "command")
    assert list(subcommands.choices) == cli.COMMANDS


def test_a_listed_subcommand_without_its_module_is_an_error(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "no_such_command"])
    with pytest.raises(ImportError, match=r"'no_such_command'.*launch/cli/no_such_command\.py is missing"):
        cli.build_parser()
