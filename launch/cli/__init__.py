"""Subcommands of the `mdeq` command, one module each."""
