"""``mdeq launch local``: torchrun on this machine restarts failed workers, and each rank keeps a log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_local_restarts_failed_workers_and_logs_per_rank(tmp_path):
    done = subprocess.run([sys.executable, "-m", "launch.cli.main", "launch", "local", "--nproc", "2",
                           "--max-restarts", "1", "--log-dir", str(tmp_path / "logs"),
                           "--script", str(SCRIPTS / "fail_once.py")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in (0, 1):
        log = (tmp_path / "logs" / f"rank-{rank}.log").read_text()
        # one header per start, the restart counter in it, the output of both attempts
        assert "attempt 0 ===" in log and "attempt 1 ===" in log
        assert f"ATTEMPT 0 RANK {rank} WORLD 2" in log and f"ATTEMPT 1 RANK {rank} WORLD 2" in log
    assert "rank 1 fails once on purpose" in (tmp_path / "logs" / "rank-1.log").read_text()
