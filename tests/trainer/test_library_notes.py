"""Library output adjusted for users: no JSON-breaking constants, DeepSpeed's known-harmless ZeRO
warning dropped (and only it), the op build announced exactly when ninja has work to do."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from trainer.jsonable import dumps, finite_or_none


def test_non_finite_values_become_null_at_any_depth():
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, "x"), "e": 3}
    assert finite_or_none(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"], "e": 3}
    text = dumps(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"constant {c} written")) == finite_or_none(value)


def test_zero_untested_optimizer_warning_is_dropped(one_rank_process_group):
    import logging

    from trainer.config import load_config
    from trainer.engine import build_engine

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.messages: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.messages.append(record.getMessage())

    # DeepSpeed's logger does not propagate to the root logger (pytest's caplog would see nothing):
    # listen on it directly, after its filters, where its own console handler listens
    logger, kept = logging.getLogger("DeepSpeed"), Keep()
    logger.addHandler(kept)
    try:
        cfg = load_config(None, ["deepspeed.zero_stage=1", "data.batch_size=2"])
        model = torch.nn.Linear(4, 2)
        engine = build_engine(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), 1)
        logger.warning("another DeepSpeed warning")  # still shown
    finally:
        logger.removeHandler(kept)
    assert not any("untested optimizer" in m for m in kept.messages), kept.messages
    assert "another DeepSpeed warning" in kept.messages
    engine.destroy()


def test_op_build_is_announced_only_when_ninja_has_work(tmp_path):
    from trainer.library_notes import SHM_OP_NAME, op_needs_build

    (tmp_path / "src.txt").write_text("source")
    (tmp_path / "build.ninja").write_text(f"rule copy\n  command = cp $in $out\nbuild obj.o: copy src.txt\n"
                                          f"build {SHM_OP_NAME}.so: copy obj.o\ndefault {SHM_OP_NAME}.so\n")
    assert op_needs_build(tmp_path)  # nothing built yet
    subprocess.run(["ninja", "-C", str(tmp_path)], check=True, capture_output=True)
    assert not op_needs_build(tmp_path)  # cached: silent
    (tmp_path / "obj.o").unlink()  # an interrupted build elsewhere removed an object file
    assert op_needs_build(tmp_path)


def test_a_build_in_progress_is_seen_through_torchs_lock(tmp_path):
    import fcntl
    import os

    from trainer.library_notes import build_in_progress

    assert not build_in_progress(tmp_path)  # never built here
    lock = tmp_path / "lock"
    lock.touch()
    assert not build_in_progress(tmp_path)  # the file alone is what a finished build leaves: nobody waits on it
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, os, sys
fd = os.open({str(lock)!r}, os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
sys.stdin.read()
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert build_in_progress(tmp_path)  # another process builds: say we wait for it
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not build_in_progress(tmp_path)  # the kernel released the holder's lock when it exited
    fd = os.open(lock, os.O_RDWR)  # and we did not keep it
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)
