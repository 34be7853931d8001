"""Errors a user causes when training: bad checkpoints, impossible batch layouts, ..."""


class TrainerError(RuntimeError):
    """A training request that cannot proceed; the message says what to do."""
