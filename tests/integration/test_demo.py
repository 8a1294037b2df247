"""`shardmill demo`, the README's main command, runs end to end and checks itself."""

from __future__ import annotations

import json

from helpers import run_cli


def test_demo_matches_numpy() -> None:
    proc = run_cli("demo", "--rows", "200000", "--shards", "8", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["matches_numpy"] is True
    assert report["rows"] == 200_000 and report["shards"] == 8
    assert max(report["max_rel_error"].values()) <= 1e-9
