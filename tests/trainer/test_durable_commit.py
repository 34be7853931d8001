"""Durable commits, with real processes: 2 ranks of `mdeq train` under strace, rank 1 SIGKILLed
between its file writes and the commit marker of the second checkpoint.

strace records every fsync/rename the ranks make. A checkpoint is durable when, before its
COMMITTED.json is renamed into place, every file the marker lists was fsynced (itself, or as the
temporary file renamed onto it) and the folders holding them were fsynced: then a machine crash
after the commit cannot leave the marker pointing at a missing or short file. Checked with hash
checking on and off (the marker then records sizes only).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

import pytest

from tests.trainer import mdeq_runs as runs
from trainer.checkpoint import store

pytestmark = [pytest.mark.integration]

SYSCALLS = "fsync,fdatasync,rename,renameat,renameat2"
LINE = re.compile(r"^(?P<pid>\d+)\s+(?P<time>\d+\.\d+)\s+(?:<\.\.\. )?(?P<call>\w+)")
FSYNC = re.compile(r"^\d+\s+(?P<time>\d+\.\d+)\s+f(?:data)?sync\(\d+<(?P<path>[^>]*)>")
RENAME = re.compile(r'^\d+\s+(?P<time>\d+\.\d+)\s+rename(?:at2?)?\((?:[^"]*)"(?P<src>[^"]+)",(?:[^"]*)"(?P<dst>[^"]+)"')


def strace() -> str:
    path = shutil.which("strace")
    if path is None:
        if os.environ.get("MDEQ_REQUIRE_ALL_TESTS") == "1":
            pytest.fail("strace is not installed (apt-get install strace); MDEQ_REQUIRE_ALL_TESTS=1")
        pytest.skip("strace is not installed (apt-get install strace)")
    return path


def parse(trace_files: list[Path]) -> tuple[list[tuple[float, str]], list[tuple[float, str, str]]]:
    """(fsyncs as (time, path), renames as (time, src, dst)) of every traced process."""
    fsyncs, renames = [], []
    for trace in trace_files:
        for line in trace.read_text(errors="replace").splitlines():
            if (m := FSYNC.match(line)) and "= -1" not in line:
                fsyncs.append((float(m["time"]), os.path.realpath(m["path"])))
            elif (m := RENAME.match(line)) and "= -1" not in line:
                renames.append((float(m["time"]), os.path.realpath(m["src"]), os.path.realpath(m["dst"])))
    return fsyncs, renames


@pytest.mark.timeout(900)
@pytest.mark.parametrize("verify_hash", [True, False])
def test_a_rank_killed_before_the_marker_never_yields_a_committed_checkpoint_with_a_missing_or_short_file(
        tmp_path, verify_hash):
    tracer = strace()
    data = runs.make_data(tmp_path / "data")
    ckpt = tmp_path / "ckpt"
    config = runs.write_config(tmp_path / "run", data, ckpt, train__max_steps=4,
                               checkpoint__verify_hash=verify_hash, deepspeed__zero_stage=1)
    traces = [tmp_path / f"trace.rank{rank}" for rank in range(2)]
    log = tmp_path / "run" / "train"
    procs = runs.start(["train", "--config", str(config)], log, world=2,
                       prefix=lambda rank: [tracer, "-f", "--seccomp-bpf", "-qq", "-ttt", "-y", "-e",
                                            f"trace={SYSCALLS}", "-o", str(traces[rank])],
                       MDEQ_TEST_CRASH_IN_SAVE="4:1:kill")
    codes = runs.wait(procs, log, 600)
    out = runs.logs(log)
    assert codes[1] == -signal.SIGKILL and codes[0] != 0, (codes, out[-4000:])

    assert runs.committed(ckpt) == [2]  # the killed save never committed
    step4 = ckpt / store.tag_for_step(4)
    assert step4.is_dir() and not (step4 / store.MARKER).exists()
    tag_dir = ckpt / store.tag_for_step(2)
    point = store.verify(tag_dir, check_hash=True)  # every listed file present with its size (and hash)
    assert point.world_size == 2 and point.step == 2
    marker = json.loads((tag_dir / store.MARKER).read_text())
    assert all((info["sha256"] is not None) == verify_hash for info in marker["files"].values())

    fsyncs, renames = parse(traces)
    real_dir = os.path.realpath(tag_dir)
    (committed_at,) = [t for t, _src, dst in renames if dst == os.path.join(real_dir, store.MARKER)]
    synced = {path: t for t, path in sorted(fsyncs, reverse=True)}  # path -> first fsync time
    renamed_from = {dst: (t, src) for t, src, dst in renames}

    def durable_before(path: str, deadline: float) -> bool:
        if synced.get(path, float("inf")) < deadline:
            return True
        if path in renamed_from:  # written under a temporary name, fsynced, renamed
            t, src = renamed_from[path]
            return t < deadline and synced.get(src, float("inf")) < t
        return False

    listed = sorted(marker["files"])
    assert any(name.endswith("optim_states.pt") for name in listed) and "model.pt" in listed
    not_durable = [rel for rel in listed if not durable_before(os.path.join(real_dir, rel), committed_at)]
    assert not not_durable, f"files not fsynced before the marker: {not_durable}"
    for folder in (real_dir, os.path.join(real_dir, store.CLIENT_DIR)):
        assert synced.get(folder, float("inf")) < committed_at, f"{folder} not fsynced before the marker"
