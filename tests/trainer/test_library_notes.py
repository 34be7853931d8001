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


def _op_build_files(build_dir) -> None:
    """A build.ninja shaped like the op's: one object file linked into the op's library."""
    from trainer.library_notes import SHM_OP_NAME

    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "src.txt").write_text("source")
    (build_dir / "build.ninja").write_text(f"rule copy\n  command = cp $in $out\nbuild obj.o: copy src.txt\n"
                                           f"build {SHM_OP_NAME}.so: copy obj.o\ndefault {SHM_OP_NAME}.so\n")


def test_op_build_is_announced_only_when_ninja_has_work(tmp_path):
    from trainer.library_notes import op_needs_build

    _op_build_files(tmp_path)
    assert op_needs_build(tmp_path)  # nothing built yet
    subprocess.run(["ninja", "-C", str(tmp_path)], check=True, capture_output=True)
    assert not op_needs_build(tmp_path)  # cached: silent
    (tmp_path / "obj.o").unlink()  # an interrupted build elsewhere removed an object file
    assert op_needs_build(tmp_path)


def test_op_build_announcement_is_on_stderr_once_per_machine(tmp_path, monkeypatch, capsys):
    import fcntl
    import os

    from trainer.library_notes import SHM_OP_NAME, announce_op_build

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # torch's build folder is <this>/<op name>
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the op is built on CPU-only machines
    build_dir = tmp_path / SHM_OP_NAME
    announce_op_build()
    captured = capsys.readouterr()
    assert f"building DeepSpeed's CPU communication op {SHM_OP_NAME}" in captured.err and str(build_dir) in captured.err
    assert captured.out == ""  # stdout stays one JSON document under --json
    monkeypatch.setenv("LOCAL_RANK", "1")
    announce_op_build()
    assert capsys.readouterr().err == ""  # one process per machine says it
    monkeypatch.setenv("LOCAL_RANK", "0")
    _op_build_files(build_dir)
    subprocess.run(["ninja", "-C", str(build_dir)], check=True, capture_output=True)
    announce_op_build()
    assert capsys.readouterr().err == ""  # built: nothing to say
    (build_dir / "lock").touch()  # what every finished build leaves: nothing to say
    announce_op_build()
    assert capsys.readouterr().err == ""
    fd = os.open(build_dir / "lock", os.O_RDWR)  # another open file, so its flock excludes torch's as a process's would
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        announce_op_build()
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert f"waiting for another process's build of DeepSpeed's {SHM_OP_NAME} op in {build_dir}" in err
    assert "building" not in err


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
