"""The example client script runs against a real cluster and prints the merged result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from helpers import cluster_env

from shardmill import LocalCluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "submit_job.py"


def test_example_client_script(cluster: LocalCluster, tmp_path: Path) -> None:
    data = np.arange(4000, dtype=np.float64).reshape(400, 10)
    path = tmp_path / "x.npy"
    np.save(path, data)
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            str(path),
            "--shards",
            "5",
            "--master",
            cluster.client_address,
            "--keys",
            str(cluster.keys_dir),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "rows: 400, shards merged: 5" in proc.stdout
    assert np.array2string(data.mean(0), precision=4) in proc.stdout


def test_etl_pipeline_example() -> None:
    # The README's pipeline example, as a user runs it: its own data, its own local cluster.
    script = Path(__file__).resolve().parents[2] / "examples" / "etl_pipeline.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--rows", "50000"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "matches NumPy: True" in proc.stdout
    assert "stage 1 groupby user: 8/8 shards" in proc.stdout
