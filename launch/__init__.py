"""Turning a machine or cluster environment into training processes; the `mdeq` command."""
