"""Run joblib's own backend tests (joblib/test/test_parallel.py) against the shardmill backend.

    python bench/joblib_suite.py [-- PYTEST ARGS]

Starts a LocalCluster (2 workers, CURVE keys, --allow-pickle, the client's key in KEYS/pickle:
joblib's tests call local functions and lambdas), registers "shardmill" as joblib's backend
pointing at it, copies test_parallel.py with PARALLEL_BACKENDS = ["shardmill"] and runs the
tests parametrized with the shardmill backend (`-k shardmill`). Prints pytest's summary; the
pass count goes to bench/RESULTS.md. Not part of the default test run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import joblib

CONFTEST = """
import os
import joblib
from shardmill.joblib import ShardmillBackend


class SuiteBackend(ShardmillBackend):  # a class, as joblib's tests compare backend types
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("master", os.environ["SHARDMILL_SUITE_MASTER"])
        kwargs.setdefault("keys", os.environ["SHARDMILL_SUITE_KEYS"])
        kwargs.setdefault("pickle", True)
        super().__init__(*args, **kwargs)


joblib.register_parallel_backend("shardmill", SuiteBackend)
"""


def main() -> int:
    from shardmill import LocalCluster
    from shardmill.wire.security import keygen

    work = Path(tempfile.mkdtemp(prefix="shardmill-joblib-suite-"))
    keys = work / "keys"
    keygen(keys)
    (keys / "pickle").mkdir()
    shutil.copy(keys / "clients" / "client.key", keys / "pickle" / "client.key")
    source = Path(joblib.__file__).parent / "test" / "test_parallel.py"
    text = source.read_text().replace(
        'PARALLEL_BACKENDS = PROCESS_BACKENDS + ["threading"]', 'PARALLEL_BACKENDS = ["shardmill"]'
    )
    (work / "test_parallel_shardmill.py").write_text(text)
    (work / "conftest.py").write_text(CONFTEST)
    env = dict(os.environ)  # workers import the copied test module's functions by name
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")]))
    cluster = LocalCluster(workers=2, keys=keys, worker_args=["--allow-pickle"], env=env)
    with cluster:
        env.update(SHARDMILL_SUITE_MASTER=cluster.client_address, SHARDMILL_SUITE_KEYS=str(keys))
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "shardmill"]
        args += ["-o", "filterwarnings=", "--timeout", "60", "test_parallel_shardmill.py"]
        done = subprocess.run([*args, *sys.argv[1:]], cwd=work, env=env, check=False)
    shutil.rmtree(work, ignore_errors=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
