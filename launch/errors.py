"""Errors a user causes with launch arguments or the cluster environment."""


class LaunchError(RuntimeError):
    """A launch that cannot proceed; the message says what to do."""
