"""The checks CI will not forgive: ruff, ruff format and mypy --strict on the package."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["common", "master", "worker", "tests", "examples", "bench"]


def _run(*cmd: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def _existing() -> list[str]:
    return [s for s in SOURCES if (ROOT / s).exists()]


def test_ruff_check() -> None:
    _run(sys.executable, "-m", "ruff", "check", *_existing())


def test_ruff_format() -> None:
    _run(sys.executable, "-m", "ruff", "format", "--check", *_existing())


def test_mypy_strict() -> None:
    # mypy cannot follow setuptools' package-dir import hook, so lay out the package as it is
    # installed (common/ -> shardmill, master/ -> shardmill.master, ...) with symlinks. The
    # layout lives at a path fixed per checkout, so mypy's cache there stays valid from run to
    # run (it rechecks what changed: a cold check takes 9 s here, a warm one about 2 s).
    checkout = hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]
    tmp_path = Path(tempfile.gettempdir()) / f"shardmill-mypy-{checkout}"
    pkg = tmp_path / "shardmill"
    shutil.rmtree(pkg, ignore_errors=True)
    pkg.mkdir(parents=True)
    for entry in (ROOT / "common").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    (pkg / "master").symlink_to(ROOT / "master")
    (pkg / "worker").symlink_to(ROOT / "worker")
    env = {**os.environ, "MYPYPATH": str(tmp_path)}
    mypy = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    cache = ["--cache-dir", str(tmp_path / ".mypy_cache")]
    _run(*mypy, *cache, "-p", "shardmill", cwd=tmp_path, env=env)
    assert shutil.which("shardmill") is not None
