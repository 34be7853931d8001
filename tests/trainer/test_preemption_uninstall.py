"""The preemption handler does not outlive ``train()``: two runs in one real process, SIGTERM in the
first run's last step (its grace watchdog must not kill the second run)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.trainer import mdeq_runs as runs

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(900)
def test_sigterm_in_the_last_step_of_one_run_does_not_kill_the_next_run_in_the_process(tmp_path):
    data = runs.make_data(tmp_path / "data")
    first = runs.write_config(tmp_path / "first", data, tmp_path / "first" / "ckpt", train__max_steps=2,
                              checkpoint__every_steps=0, checkpoint__grace_seconds=5.0)
    second = runs.write_config(tmp_path / "second", data, tmp_path / "second" / "ckpt", train__max_steps=2,
                               checkpoint__every_steps=0)
    result = tmp_path / "result.json"
    proc = subprocess.run([runs.PYTHON, str(runs.REPO / "tests" / "trainer" / "scripts" / "train_twice.py"),
                           str(first), str(second), str(result)], env=runs.rank_env(0, 1, runs.free_port()),
                          cwd=runs.REPO, capture_output=True, text=True, timeout=800)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    summary = json.loads(result.read_text())
    assert summary == {"first_steps": 2, "second_steps": 2, "signalled": True, "sigterm_handler_restored": True}
    assert runs.committed(tmp_path / "first" / "ckpt") == [2] and runs.committed(tmp_path / "second" / "ckpt") == [2]
