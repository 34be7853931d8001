"""One training run per checkpoint folder: the run lock, with real processes.

- two real `mdeq train` runs on one folder: the second is refused naming the first (host, pid,
  start time) while the first trains, and allowed (stale lock taken over) after it is SIGKILLed;
- ``RunLock`` against a holder process that is alive / SIGKILLed, and against a holder on another
  host whose heartbeat is fresh / older than ``lock_stale_seconds``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer import mdeq_runs as runs
from trainer.errors import TrainerError

LOCK_NAME = "RUN.lock"  # the lock file (``trainer.checkpoint.lock``, imported by the tests that use it)

HOLD = """
import sys
from pathlib import Path
from trainer.checkpoint.lock import RunLock
RunLock(Path(sys.argv[1])).acquire()
print("held", flush=True)
sys.stdin.read()  # hold until the test closes stdin (or kills us)
"""


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_second_run_is_refused_while_the_first_trains_and_allowed_after_it_is_killed(tmp_path):
    data = runs.make_data(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    first = runs.write_config(tmp_path / "first", data, ckpt, train__max_steps=100000)
    log = tmp_path / "first" / "train"
    procs = runs.start(["train", "--config", str(first)], log)
    try:
        runs.wait_for(lambda: bool(runs.committed(ckpt)), 300, "the first run's first commit", procs, log)
        second = runs.write_config(tmp_path / "second", data, ckpt, train__max_steps=100000)
        codes, out = runs.train(second, tmp_path / "second" / "refused")
        assert procs[0].poll() is None, "the first run must still be training"
        assert codes == [2], out[-4000:]
        holder = json.loads((ckpt / LOCK_NAME).read_text())
        assert holder["pid"] == procs[0].pid
        for fact in (str(ckpt), socket.gethostname(), f"pid {procs[0].pid}", holder["started_at"]):
            assert fact in out, fact
        assert not (tmp_path / "second" / "metrics.jsonl").exists()
    finally:
        runs.kill(procs)  # SIGKILL: the lock stays behind, its holder dead
    assert (ckpt / LOCK_NAME).exists()
    newest = max(runs.committed(ckpt))
    codes, out = runs.train(second, tmp_path / "second" / "after-kill", sets=(f"train.max_steps={newest + 1}",))
    assert codes == [0], out[-4000:]
    assert "taking over the lock" in out and f"process {procs[0].pid} on this host is gone" in out
    assert newest + 1 in runs.committed(ckpt)  # it resumed the first run's folder
    assert not (ckpt / LOCK_NAME).exists()  # released at the end


@pytest.mark.timeout(120)
def test_a_live_holder_process_refuses_and_a_killed_one_is_taken_over(tmp_path, caplog):
    from trainer.checkpoint.lock import RunLock

    env = dict(os.environ, PYTHONPATH=str(runs.REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(TrainerError, match=f"pid {holder.pid}, started"):
            RunLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = RunLock(tmp_path)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert f"process {holder.pid} on this host is gone" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.timeout(60)
def test_a_lock_from_another_host_is_stale_only_after_its_heartbeat_is_older_than_the_timeout(tmp_path, caplog):
    from trainer.checkpoint.lock import RunLock

    path = tmp_path / LOCK_NAME
    path.write_text(json.dumps({"host": "other-node", "pid": 4242, "started_at": "2026-01-01T00:00:00Z",
                                "token": "theirs"}))
    with pytest.raises(TrainerError, match="host other-node, pid 4242"):
        RunLock(tmp_path, stale_after_seconds=600).acquire()
    old = path.stat().st_mtime - 601  # the holder's last heartbeat, 601 s ago
    os.utime(path, (old, old))
    with pytest.raises(TrainerError, match="host other-node"):
        RunLock(tmp_path, stale_after_seconds=3600).acquire()  # a longer timeout: still held
    lock = RunLock(tmp_path, stale_after_seconds=600)
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "no heartbeat from host other-node" in caplog.text
    lock.release()


@pytest.mark.timeout(60)
def test_the_holder_refreshes_the_heartbeat(tmp_path):
    from trainer.checkpoint.lock import RunLock

    lock = RunLock(tmp_path, heartbeat_seconds=0.05)
    lock.acquire()
    try:
        stale = Path(tmp_path / LOCK_NAME).stat().st_mtime - 1000
        os.utime(tmp_path / LOCK_NAME, (stale, stale))
        runs.wait_for(lambda: (tmp_path / LOCK_NAME).stat().st_mtime > stale + 900, 30, "a heartbeat", [], tmp_path)
    finally:
        lock.release()
