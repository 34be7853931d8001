"""Errors a user causes when building or running a model (bad name, shape, combination)."""


class MDEQError(ValueError):
    """A model request that cannot be honoured; the message says what would work."""
