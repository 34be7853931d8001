"""Errors a user causes with a config file or an override."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what to do."""
