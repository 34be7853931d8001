"""Errors a user causes with data: missing or unreadable shards, bad source layouts."""


class DataError(ValueError):
    """Data that cannot be used; the message says what is wrong and what to do."""
