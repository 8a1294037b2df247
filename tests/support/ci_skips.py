"""CI refuses to skip: a pytest plugin (tests/conftest.py loads its hooks).

Under CI (CI set and not "0"/"false"/"no", as .ci/run sets it), a skipped test is a failed one:
a missing Docker daemon, browser or package must turn the build red, not pass it quietly.
Outside CI a skip stays a skip, with the message that says what to install.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def ci_refuses_skips() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if ci_refuses_skips() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which runs every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    _fail_skip(outcome.get_result())
