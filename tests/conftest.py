"""What every test shares: the one-thread fixture, and no silent skips in CI.

With ``MDEQ_REQUIRE_ALL_TESTS=1`` (``.ci/run`` sets it) a test that would be skipped, for whatever
reason (a missing tool, a ``skipif``, a ``pytest.skip`` in a fixture or at module level), fails
instead, naming the reason: CI installs everything, so a skip there is a broken install.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ALL = "MDEQ_REQUIRE_ALL_TESTS"


def _skip_becomes_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not report.skipped or hasattr(report, "wasxfail") or os.environ.get(REQUIRE_ALL) != "1":
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped, but {REQUIRE_ALL}=1 requires every test to run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _skip_becomes_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _skip_becomes_failure(outcome.get_result())


@pytest.fixture(scope="module")
def single_thread():
    """One torch CPU thread for the module's tests, restored afterwards.

    At the tests' sizes a second OpenMP thread buys nothing, and on a shared, oversubscribed
    machine threads wait for each other at every op.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
