"""CI refuses to skip: under CI=1 a skipped test fails the run and says why; outside CI it is a
skip. Checked on a throwaway test tree run by a real pytest process with our plugin."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SUPPORT = Path(__file__).parent / "support"
SKIPPING = """
import pytest
pytest.importorskip("shardmill_no_such_module")
def test_never_runs(): pass
"""
SKIPS_INSIDE = """
import pytest
def test_needs_a_browser(): pytest.skip("no chromium: apt-get install chromium")
def test_fine(): pass
"""


def _pytest(tree: Path, ci: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(SUPPORT)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider"]
    return subprocess.run(
        [*cmd, "-c", os.devnull, "--rootdir", str(tree), str(tree)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        (SKIPPING, "could not import 'shardmill_no_such_module'"),
        (SKIPS_INSIDE, "no chromium: apt-get install chromium"),
    ],
)
def test_a_skip_fails_under_ci_with_its_reason_and_stays_a_skip_outside(
    tmp_path: Path, source: str, reason: str
) -> None:
    # Given a test that skips itself (at import, or while it runs)
    (tmp_path / "test_it.py").write_text(source)
    # When it runs under CI / Then the run is red and says why
    red = _pytest(tmp_path, "1")
    assert red.returncode != 0, red.stdout
    assert "skipped under CI, which runs every test" in red.stdout and reason in red.stdout
    # And outside CI it is a plain skip: the run is green
    green = _pytest(tmp_path, "")
    assert green.returncode in (0, 5), green.stdout  # 5: every test of the tree skipped
    assert "skipped" in green.stdout
