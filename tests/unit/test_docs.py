"""The manual: the MkDocs site builds with --strict (a broken link, a missing anchor, a page
left out of the nav or a docstring mkdocstrings cannot render fails), and the README stays a
front page: at most 150 lines, its links pointing at files that exist, its test command the
one .ci/run runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # every page under docs/ was built, and the API reference has the docstrings in it
    for page in (ROOT / "docs").glob("*.md"):
        built = site / ("index.html" if page.stem == "index" else f"{page.stem}/index.html")
        assert built.is_file(), f"{page.name} was not built"
    api = (site / "api" / "index.html").read_text()
    for name in (
        "client.Client",
        "client.Client.workers",  # no docstring of its own: listed all the same
        "client.Client.run",  # inherited from PipelineCalls
        "job.Job",
        "local.LocalCluster",
        "pipeline.Pipeline",
        "errors.RemoteError",
        "errors.JobFailed",
    ):
        assert f'id="shardmill.{name}"' in api, f"shardmill.{name} missing from the API page"
    # SECURITY.md is included whole, not copied
    security = (site / "security" / "index.html").read_text()
    assert "security model" in security


def test_readme_is_a_front_page() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move the detail to docs/"


def test_readme_links_resolve() -> None:
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to no page of the manual"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"


def test_readme_test_command_is_the_ci_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in README.read_text(), f"README does not show .ci/run's command: {ci}"
