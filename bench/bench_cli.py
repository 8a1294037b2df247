"""CLI start-up: the wall time of `shardmill status`, `jobs` and `workers` against a running
master, as a user runs them (the console script next to this Python, else `-m shardmill`)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench_context import Bench
from bench_harness import SHARDMILL, Metric, Target, new_cluster

COMMANDS = (["status"], ["jobs"], ["workers"])


def cli_queries(b: Bench) -> list[Metric]:
    script = Path(sys.executable).with_name("shardmill")  # a venv's console script
    prog = [str(script)] if script.exists() else [sys.executable, "-m", "shardmill"]
    metrics = []
    with new_cluster() as cluster, cluster.client() as client:
        client.map("bench_tasks:noop1", [(i,) for i in range(10)]).result()  # a job to list
        env = {**os.environ, **cluster.client_env()}
        for cmd in COMMANDS:
            runs = []
            for _ in range(b.reps + 1):
                b.settle()
                t0 = time.perf_counter()
                proc = subprocess.run([*prog, *cmd], env=env, capture_output=True)
                runs.append(time.perf_counter() - t0)
                if proc.returncode != 0:
                    raise RuntimeError(f"shardmill {cmd[0]}: {proc.stderr.decode()[-300:]}")
            m = Metric(
                f"cli-{cmd[0]}",
                f"CLI: `shardmill {cmd[0]}` against a running master, wall",
                "s",
                False,
                target=Target("<=", 0.3),
            ).add(SHARDMILL, runs[1:])  # the first run warms the file cache
            m.note = " ".join(Path(prog[0]).name if i == 0 else a for i, a in enumerate(prog))
            metrics.append(m)
    return metrics
