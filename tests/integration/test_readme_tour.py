"""The README's tour runs as written, line for line, in an empty directory: keys made there, a
master and a worker on their default ports, data made, two jobs, watch, jobs, workers, why and
the dashboard. It runs in a network namespace of its own (`unshare -n`), so the default ports
(5555, 5556, 8787) are free whatever else runs on this machine."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"

# Not the README's: loopback up in the new namespace, background jobs ended on exit
PRELUDE = """set -euo pipefail
ip link set lo up
trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT
"""
# Not the README's: the dashboard the last line started answers
EPILOGUE = """python - <<'EOF'
import time, urllib.request
deadline = time.monotonic() + 30
while True:
    try:
        page = urllib.request.urlopen("http://127.0.0.1:8787/", timeout=2).read().decode()
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
print("dashboard answered:", "shardmill" in page.lower())
EOF
"""


def tour_block() -> str:
    section = README.read_text().split("\n## A tour\n", 1)[1]
    return section.split("```bash\n", 1)[1].split("```", 1)[0]


def tour_env(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)  # `python` is this interpreter
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHARDMILL_", "XDG_"))}
    path = [str(bin_dir), sysconfig.get_path("scripts"), env.get("PATH", "")]
    return {**env, "HOME": str(tmp_path / "home"), "PATH": os.pathsep.join(path)}


def test_readme_tour_runs_as_written(tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("the tour needs root, unshare and ip for a network namespace of its own")
    work = tmp_path / "empty"
    work.mkdir()
    script = PRELUDE + tour_block() + EPILOGUE
    proc = subprocess.Popen(
        ["unshare", "-n", "bash", "-c", script],
        cwd=work,
        env=tour_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, out
    assert "rows: 1000000, shards merged: 16" in out, out  # submit --wait printed the result
    assert re.search(r"done .*16/16 shards", out), out  # watch followed the first job to its end
    assert re.search(r"shard 0: done, 1 attempt", out), out  # why told shard 0's story
    assert "dashboard answered: True" in out, out
    assert "Traceback" not in out, out
