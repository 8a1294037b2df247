"""System programs a test needs (chromium, nginx): Debian's packages, installed on first need.

pip cannot install them, so the project's own tests do (as root, with apt-get); elsewhere the
test is skipped with the command that installs them, which CI turns into a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure(programs: list[str], packages: list[str]) -> list[str]:
    """Paths of `programs`, installing `packages` with apt-get when one is missing."""

    def found() -> list[str] | None:
        paths = [shutil.which(p) or shutil.which(p, path="/usr/sbin:/sbin") for p in programs]
        return None if None in paths else [p for p in paths if p]

    if paths := found():
        return paths
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", *packages]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            subprocess.run(install, env=env, capture_output=True)
    if paths := found():
        return paths
    pytest.skip(f"no {' or '.join(programs)}: apt-get install {' '.join(packages)}")
