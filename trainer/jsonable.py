"""JSON that every parser reads: non-finite floats become ``null``.

Python's ``json`` writes ``NaN`` and ``Infinity``, which are not JSON (``python -m json.tool``,
``jq`` and browsers reject them). A metric that has no value - the IoU of a class that appears
neither in the labels nor in the predictions, a loss over an interval in which every step was
skipped - is written as ``null`` instead; docs/training.md lists which fields can be null and why.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(value: Any) -> Any:
    """``value`` with every NaN/±Inf float (at any depth of dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of ``value`` with non-finite floats as null (``allow_nan=False`` guards the rest)."""
    return json.dumps(finite_or_none(value), allow_nan=False, **kwargs)
