"""The ``--json`` contract: stdout holds exactly one JSON document.

DeepSpeed prints its op-build messages, loggers print banners and warnings, and subprocesses
(ninja, g++) write straight to file descriptor 1. ``json_stdout()`` points descriptor 1 and
``sys.stdout`` at stderr for the duration of the command, so all of that lands on stderr, and
returns an ``emit`` function that writes the one JSON document to the real stdout.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from trainer.jsonable import dumps


@contextlib.contextmanager
def json_stdout(enabled: bool = True) -> Iterator[Callable[[Any], None]]:
    """Inside: everything printed goes to stderr; ``emit(obj)`` writes ``obj`` as JSON to the real stdout.

    With ``enabled=False`` nothing is redirected and ``emit`` prints to stdout as usual.
    """
    if not enabled:
        yield lambda obj, **kw: print(dumps(obj, **kw), flush=True)
        return
    sys.stdout.flush()
    saved_fd = os.dup(1)
    saved_stdout = sys.stdout
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    real = os.fdopen(os.dup(saved_fd), "w", encoding="utf-8", closefd=True)

    def emit(obj: Any, **kwargs: Any) -> None:
        real.write(dumps(obj, **kwargs) + "\n")
        real.flush()

    try:
        yield emit
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        sys.stdout = saved_stdout
        real.close()
