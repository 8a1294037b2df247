"""Benchmark a committed revision of the runtime while others edit the working tree.

`--rev REV` lays `git archive REV` out as the installed package would be (common/ ->
shardmill, master/ -> shardmill.master, worker/ -> shardmill.worker) under
bench/.data/runtime/<sha>/ and runs the harness again with that directory first on
PYTHONPATH, which every cluster process inherits.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bench_harness import DATA_DIR, REPO_DIR

REV_ENV = "SHARDMILL_BENCH_REV"
LAYOUT = {"common": "shardmill", "master": "shardmill/master", "worker": "shardmill/worker"}


def snapshot(rev: str) -> tuple[Path, str]:
    """Extract the runtime at `rev` once; return the directory to import it from and its sha."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}").decode().strip()
    root = DATA_DIR / "runtime" / sha[:12]
    if not (root / "shardmill" / "__init__.py").exists():
        shutil.rmtree(root, ignore_errors=True)
        src = root / "src"
        src.mkdir(parents=True)
        with tarfile.open(fileobj=io.BytesIO(_git("archive", sha, *LAYOUT))) as tar:
            tar.extractall(src, filter="data")
        for part, dest in LAYOUT.items():
            shutil.copytree(src / part, root / dest)
    return root, sha


def rerun_at(rev: str, script: str, argv: list[str]) -> None:
    """Replace this process with `script` importing the runtime at `rev`."""
    root, sha = snapshot(rev)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env[REV_ENV] = sha
    os.execve(sys.executable, [sys.executable, script, *argv], env)


def runtime_source() -> str:
    rev = os.environ.get(REV_ENV)
    return f"git revision {rev} (snapshot)" if rev else "working tree"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, check=True).stdout
