"""Preemption flag and divergence guard (single process; the multi-process paths run in test_fault_integration)."""

from __future__ import annotations

import math
import os
import signal

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


def test_grace_time_is_enforced_when_no_step_boundary_comes(tmp_path):
    """A rank stuck in a long step still exits within grace_seconds of the signal, with code 75."""
    import subprocess
    import sys
    import time

    script = ("import os, signal, time\n"
              "from trainer.fault import PreemptionHandler\n"
              "PreemptionHandler(grace_seconds=0.5).install()\n"
              "os.kill(os.getpid(), signal.SIGTERM)\n"
              "time.sleep(30)  # a step that never reaches should_stop()\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == PREEMPTED_EXIT_CODE, done.stderr
    assert time.monotonic() - started < 20
    assert "grace_seconds=0.5" in done.stderr


def test_preempted_exit_code_is_distinct_from_errors_and_signals():
    assert PREEMPTED_EXIT_CODE not in (0, 1, 2, 128 + signal.SIGTERM, 128 + signal.SIGKILL)


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
    import argparse

    import launch.cli.main as cli
    from trainer.fault import DIVERGED_EXIT_CODE, DivergenceError

    def diverge(args):
        raise DivergenceError("training diverged at step 7")

    parser = argparse.ArgumentParser(prog="mdeq")
    parser.add_subparsers(dest="command").add_parser("train").set_defaults(func=diverge)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    assert cli.main(["train"]) == DIVERGED_EXIT_CODE
    assert DIVERGED_EXIT_CODE not in (0, 1, 2, PREEMPTED_EXIT_CODE)
    assert "training diverged at step 7" in capsys.readouterr().err  # one message, no traceback
