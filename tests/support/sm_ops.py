"""A user operation the test master and workers import with `--import sm_ops`."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from shardmill.ops import Block, UserOp
from shardmill.wire.spec import OpOptions


def _map(block: Block, options: OpOptions) -> dict[str, Any]:
    if runs := str(options.params.get("runs", "")):  # a line per execution, as it starts
        worker = os.environ.get("SHARDMILL_WORKER_ID", "?")
        with open(runs, "a") as f:  # one short write in append mode: lines never interleave
            f.write(f"{block.first_row} {worker} {time.time():.3f}\n")
    nap = float(str(options.params.get("nap", 0)))  # slow shards, for faults mid-job
    if block.first_row >= int(str(options.params.get("gate_row", -1))) >= 0:
        gate = str(options.params["gate"])  # the job waits here until a test opens it
        while not os.path.exists(gate):
            time.sleep(0.05)
        nap = float(str(options.params.get("gate_nap", nap)))  # still running as it opens
    time.sleep(nap)
    power = float(str(options.params.get("power", 2)))
    x = np.abs(np.asarray(block.values, dtype=np.float64)) ** power
    return {"n": block.rows, "total": x.sum(axis=0)}


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {"n": a["n"] + b["n"], "total": np.asarray(a["total"]) + np.asarray(b["total"])}


def _finalize(acc: dict[str, Any]) -> dict[str, Any]:
    return {"rows": acc["n"], "power_sum": np.asarray(acc["total"])}


power_sum = UserOp(map=_map, combine=_combine, finalize=_finalize)

not_an_op = 42


def _poison_map(block: Block, options: OpOptions) -> dict[str, Any]:
    """Counts rows; the process dies (crash_row) or raises (raise_row) on the shard with that
    row."""
    lo, hi = block.first_row, block.first_row + block.rows
    if lo <= int(str(options.params.get("crash_row", -1))) < hi:
        import os

        os._exit(7)
    if lo <= int(str(options.params.get("raise_row", -1))) < hi:
        raise ValueError(f"row {options.params['raise_row']} is poison")
    return {"n": block.rows}


poison = UserOp(
    map=_poison_map,
    combine=lambda a, b: {"n": a["n"] + b["n"]},
    finalize=lambda acc: {"rows": acc["n"]},
)
