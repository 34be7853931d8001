"""The suite's own settings do what they promise: timeouts end hung tests, a misspelt marker is an
error, and with MDEQ_REQUIRE_ALL_TESTS=1 no test can pass by being skipped.

Each case runs pytest in a fresh process on this repository's pyproject.toml and tests/conftest.py,
copied unchanged into a scratch directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch) -> pytest.Pytester:
    """A scratch directory with the project's pytest settings and top-level conftest."""
    pytester.makepyprojecttoml((ROOT / "pyproject.toml").read_text())
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    monkeypatch.delenv("MDEQ_REQUIRE_ALL_TESTS", raising=False)
    return pytester


@pytest.mark.timeout(120)
def test_a_timeout_marker_ends_a_hung_test(project):
    project.makepyfile(test_hangs="""
        import threading
        import pytest

        @pytest.mark.timeout(1)
        def test_hangs():
            threading.Event().wait(60)  # were the marker ignored, this would pass a minute later
    """)
    result = project.runpytest_subprocess("test_hangs.py", timeout=100)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Failed: Timeout (>1.0s) from pytest-timeout*"])


@pytest.mark.timeout(120)
def test_without_pytest_timeout_the_suite_refuses_to_run(project):
    project.makepyfile(test_ok="def test_ok():\n    pass\n")
    result = project.runpytest_subprocess("-p", "no:timeout", "test_ok.py", timeout=100)
    assert result.ret != 0
    result.stderr.fnmatch_lines(["*Missing required plugins*pytest-timeout*"])


@pytest.mark.timeout(120)
def test_an_unregistered_marker_is_an_error(project):
    project.makepyfile(test_typo="""
        import pytest

        @pytest.mark.integraton
        def test_typo():
            pass
    """)
    result = project.runpytest_subprocess("test_typo.py", timeout=100)
    assert result.ret != 0
    result.stdout.fnmatch_lines(["*'integraton' not found in `markers` configuration option*"])


SKIPPING = {
    "test_skips": """
        import sys
        import pytest

        @pytest.fixture
        def tool():
            pytest.skip("no such tool on this machine")

        def test_runs():
            pass

        @pytest.mark.skipif(sys.platform != "nowhere", reason="only on nowhere")
        def test_marked_skip():
            pass

        def test_fixture_skip(tool):
            pass

        def test_skip_in_body():
            pytest.skip("not today")
    """,
    "test_module_skip": """
        import pytest

        pytest.importorskip("no_such_module_anywhere")

        def test_never_collected():
            pass
    """,
}


@pytest.mark.timeout(120)
def test_every_kind_of_skip_fails_when_all_tests_are_required(project, monkeypatch):
    project.makepyfile(**SKIPPING)
    relaxed = project.runpytest_subprocess("test_skips.py", "test_module_skip.py", timeout=100)
    relaxed.assert_outcomes(passed=1, skipped=4)

    monkeypatch.setenv("MDEQ_REQUIRE_ALL_TESTS", "1")
    strict = project.runpytest_subprocess("test_skips.py", timeout=100)
    # a skip in setup (a skipif mark, a fixture) reports as an error, one in the test body as a failure
    strict.assert_outcomes(passed=1, failed=1, errors=2)
    for reason in ("only on nowhere", "no such tool on this machine", "not today"):
        strict.stdout.fnmatch_lines([f"*MDEQ_REQUIRE_ALL_TESTS=1 requires every test to run*{reason}*"])
    # a module that skips itself while being collected: a collection error, which stops the run
    module = project.runpytest_subprocess("test_module_skip.py", timeout=100)
    module.assert_outcomes(errors=1)
    module.stdout.fnmatch_lines(["*MDEQ_REQUIRE_ALL_TESTS=1 requires every test to run*no_such_module_anywhere*"])
