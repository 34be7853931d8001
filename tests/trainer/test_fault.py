"""Preemption flag and divergence guard (single process; the multi-process paths run in test_fault_integration)."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from trainer.fault import PREEMPTED_EXIT_CODE, DivergenceGuard, PreemptionHandler, all_finite, grads_finite


def test_sigterm_and_sigusr1_set_the_flag_and_start_the_grace_clock():
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        handler = PreemptionHandler(grace_seconds=5.0).install()
        try:
            assert not handler.should_stop()
            assert handler.seconds_left() == 5.0
            os.kill(os.getpid(), sig)
            assert handler.should_stop()
            assert handler.signal_received == sig
            assert 0 < handler.seconds_left() <= 5.0
        finally:
            handler.uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


STUCK_IN_A_STEP = ("import os, signal, time\n"
                   "from trainer.fault import PreemptionHandler\n"
                   "PreemptionHandler(grace_seconds=0.5).install()\n"
                   "os.kill(os.getpid(), signal.SIGTERM)\n"
                   "time.sleep(30)  # a step that never reaches should_stop()\n")


def run_python(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)


def shell_status(returncode: int) -> int:
    """The exit status a shell or scheduler sees (a process killed by signal N reads as 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


@pytest.fixture(scope="module")
def stuck_rank() -> tuple[subprocess.CompletedProcess, float]:
    """A rank signalled in a step that never ends, run once: (the process, seconds until it ended)."""
    import time

    started = time.monotonic()
    done = run_python(STUCK_IN_A_STEP)
    return done, time.monotonic() - started


def test_grace_time_is_enforced_when_no_step_boundary_comes(stuck_rank):
    """A rank stuck in a long step still exits within grace_seconds of the signal, with code 75."""
    done, seconds = stuck_rank
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr
    assert seconds < 20
    assert "grace_seconds=0.5" in done.stderr


def test_a_preempted_rank_ends_in_a_status_no_other_ending_shares(stuck_rank, tmp_path, capsys, monkeypatch):
    """What a wrapper script or scheduler sees: "try again later" (sysexits EX_TEMPFAIL) for a
    preemption, and something else for a crash, a kill by the same signal, a user error and a
    divergence, so that only the preempted job is relaunched as is."""
    import launch.cli.main as cli
    from trainer.fault import DivergenceError

    preempted = shell_status(stuck_rank[0].returncode)
    crashed = shell_status(run_python("raise RuntimeError('a bug')").returncode)
    killed = shell_status(run_python("import os, signal; os.kill(os.getpid(), signal.SIGTERM)").returncode)
    user_error = cli.main(["train", "--config", str(tmp_path / "no-such-config.yaml")])

    def diverge(args):
        raise DivergenceError("training diverged at step 7")

    parser = argparse.ArgumentParser(prog="mdeq")
    parser.add_subparsers(dest="command").add_parser("train").set_defaults(func=diverge)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    diverged = cli.main(["train"])

    endings = {"preempted": preempted, "crashed": crashed, "killed": killed, "user error": user_error,
               "diverged": diverged}
    assert preempted == os.EX_TEMPFAIL, endings
    assert len(set(endings.values())) == len(endings), endings


def test_guard_skips_then_rolls_back_after_k_consecutive_bad_steps():
    guard = DivergenceGuard(max_bad_steps=3, on_divergence="rollback")
    verdicts = [guard.observe(True, True), guard.observe(False, True), guard.observe(True, False),
                guard.observe(True, True), guard.observe(False), guard.observe(False), guard.observe(True, True, True)]
    assert verdicts == ["ok", "skip", "skip", "ok", "skip", "skip", "rollback"]
    assert guard.total_skipped == 5 and guard.rollbacks == 1 and guard.consecutive_bad == 0
    restored = DivergenceGuard()
    restored.load_state_dict(guard.state_dict())
    assert restored.total_skipped == 5


def test_guard_aborts_when_configured_or_when_rollbacks_repeat():
    abort = DivergenceGuard(max_bad_steps=1, on_divergence="abort")
    assert abort.observe(False) == "abort"
    looping = DivergenceGuard(max_bad_steps=1, on_divergence="rollback", max_rollbacks=2)
    assert [looping.observe(False) for _ in range(3)] == ["rollback", "rollback", "abort"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -math.inf])
def test_finiteness_helpers(bad):
    assert all_finite([torch.ones(3), 1.0, None])
    assert not all_finite([torch.tensor([1.0, bad])])
    assert not all_finite([bad])
    layer = torch.nn.Linear(2, 1)
    layer(torch.ones(1, 2)).sum().backward()
    assert grads_finite(layer)
    layer.weight.grad[0, 0] = bad
    assert not grads_finite(layer)


def test_divergence_error_exits_with_its_own_code_through_the_cli(monkeypatch, capsys):
    import launch.cli.main as cli
    from trainer.fault import DIVERGED_EXIT_CODE, DivergenceError

    def diverge(args):
        raise DivergenceError("training diverged at step 7")

    parser = argparse.ArgumentParser(prog="mdeq")
    parser.add_subparsers(dest="command").add_parser("train").set_defaults(func=diverge)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["train"]) == DIVERGED_EXIT_CODE
    assert "training diverged at step 7" in capsys.readouterr().err  # one message, no traceback
