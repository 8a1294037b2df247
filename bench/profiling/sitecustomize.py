"""cProfile a whole Python process when SHARDMILL_BENCH_PROFILE names a directory.

Only `bench/profile_runtime.py` puts this directory on PYTHONPATH, so that the master, the
worker agents and their child processes are profiled without touching the runtime's code.
"""

from __future__ import annotations

import os

_DIR = os.environ.get("SHARDMILL_BENCH_PROFILE")

if _DIR:
    import atexit
    import cProfile
    import sys

    _profile = cProfile.Profile()

    def _dump() -> None:
        _profile.disable()
        script = sys.argv[0] if sys.argv else "python"
        parts = os.path.normpath(script).split(os.sep)
        role = "-".join(p.removesuffix(".py") for p in parts[-2:])
        _profile.dump_stats(os.path.join(_DIR, f"{role}-{os.getpid()}.prof"))

    atexit.register(_dump)
    _profile.enable()
