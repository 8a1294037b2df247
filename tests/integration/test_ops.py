"""Built-in and user ops on a real cluster: each against NumPy, bad input, plan, master memory."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from helpers import cli_json, run_cli

from shardmill import JobFailed, JobSpecError, LocalCluster, __version__
from shardmill.exitcodes import BAD_SPEC

ROWS, COLS, KEYS = 200_000, 5, 50


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """200,000 x 5 float64: integer keys in column 0, about 1% NaN in column 3."""
    rng = np.random.default_rng(7)
    data = rng.normal(2.0, 3.0, size=(ROWS, COLS))
    data[:, 0] = rng.integers(0, KEYS, ROWS)
    data[rng.random(ROWS) < 0.01, 3] = np.nan
    path = tmp_path_factory.mktemp("ops") / "table.npy"
    np.save(path, data)
    return path, data


def test_each_op_equals_numpy_on_the_whole_data(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray]
) -> None:
    path, data = table
    with ops_cluster.client() as client:
        # Given one dataset / When every op runs over it, each with its own strategy
        jobs = {
            "stats": client.submit("column_stats", path, shards=9, nan_aware=True),
            "sums": client.submit("sum_count", path, strategy="columns", shards=3),
            "hist": client.submit("histogram", path, columns=[1, 2], bins=20, value_range=(-5, 9)),
            "counts": client.submit("value_counts", path, key=0, strategy="range", shards=4),
            "groups": client.submit("groupby", path, key=0, strategy="hash", shards=4),
            "user": client.submit(
                "sm_ops:power_sum", path, rows_per_shard=30_000, options={"power": 3}
            ),
        }
        got = {name: job.result(timeout=60) for name, job in jobs.items()}
    # Then each equals NumPy (or plain Python) on the whole array
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        np.testing.assert_allclose(got["stats"]["mean"], np.nanmean(data, 0), rtol=1e-9)
        np.testing.assert_allclose(got["stats"]["std"], np.nanstd(data, 0), rtol=1e-9)
    assert got["stats"]["valid"][3] == (~np.isnan(data[:, 3])).sum()
    np.testing.assert_allclose(got["sums"]["sum"][[0, 1, 2, 4]], data[:, [0, 1, 2, 4]].sum(0))
    for j, col in enumerate([1, 2]):
        want, _ = np.histogram(data[:, col], bins=20, range=(-5, 9))
        assert got["hist"]["counts"][j].tolist() == want.tolist()
    keys, counts = np.unique(data[:, 0], return_counts=True)
    assert got["counts"]["keys"].tolist() == keys.tolist()
    assert got["counts"]["counts"].tolist() == counts.tolist()
    for g, key in enumerate(got["groups"]["keys"]):
        rows = data[data[:, 0] == key, 1:]
        np.testing.assert_allclose(got["groups"]["mean"][g, :2], rows[:, :2].mean(0), rtol=1e-9)
        np.testing.assert_allclose(got["groups"]["max"][g, :2], rows[:, :2].max(0))
    np.testing.assert_allclose(got["user"]["power_sum"], (np.abs(data) ** 3).sum(0), rtol=1e-9)
    # And each result records which shards fed it and where it came from
    prov = got["groups"]["provenance"]
    assert prov["dataset"] == str(path) and prov["strategy"] == "hash"
    assert prov["op"] == "groupby" and prov["version"] == __version__
    assert prov["shards"] == [0, 1, 2, 3] and got["groups"]["shards_merged"] == 4
    assert got["user"]["provenance"]["shards"] == list(range(7))


def test_row_stats_output_equals_the_single_process_answer(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    path, data = table
    out = tmp_path / "rows.npy"
    with ops_cluster.client() as client:
        result = client.submit("row_stats", path, shards=12, output=out).result(timeout=60)
    assert result["output"] == str(out) and result["count"] == ROWS
    want = np.stack([data.mean(1), data.std(1), data.min(1), data.max(1)], axis=1)
    np.testing.assert_array_equal(np.isnan(np.load(out)), np.isnan(want))
    np.testing.assert_allclose(np.load(out), want, rtol=1e-12)


def test_an_array_sent_by_value_and_a_synthetic_dataset(ops_cluster: LocalCluster) -> None:
    arr = np.arange(30_000, dtype=np.float64).reshape(10_000, 3)
    synthetic = {"rows": 150_000, "cols": 3, "seed": 4, "keys": 6}
    with ops_cluster.client() as client:
        by_value = client.submit("column_stats", arr, shards=5).result(timeout=60)
        counts = client.submit(
            "value_counts", synthetic=synthetic, key=0, strategy="hash", shards=3
        ).result(timeout=60)
    np.testing.assert_allclose(by_value["mean"], arr.mean(0))
    assert by_value["provenance"]["format"] == "value" and by_value["shards_merged"] == 5
    assert counts["keys"].tolist() == list(range(6)) and counts["total"] == 150_000


def test_a_malformed_csv_row_fails_only_its_shard_naming_the_line(
    ops_cluster: LocalCluster, tmp_path: Path
) -> None:
    # Given a CSV whose line 12,345 has a field missing
    lines = ["id,price,qty"] + [f"{i},{i * 0.5},{i % 7}" for i in range(1, 20_000)]
    lines[12_344] = "12344,6172.0"
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(lines) + "\n")
    with ops_cluster.client() as client:
        job = client.submit("column_stats", path, shards=8)
        # When it runs / Then the job fails naming the file, the shard and the line
        with pytest.raises(JobFailed, match=r"orders\.csv line 12345: expected 3 fields") as err:
            job.result(timeout=60)
        shards = job.status(shards=True).shards or []
    assert "bad_input" in str(err.value) and "shard" in str(err.value)
    # And only that shard failed; no other shard was charged with it
    failed = [s for s in shards if s.state == "failed"]
    assert len(failed) == 1 and failed[0].attempts == 1
    assert all(s.state in ("done", "cancelled", "queued") for s in shards if s not in failed)
    message = failed[0].history[-1].error
    assert message is not None and f"shard {failed[0].index}:" in message.message


def test_bad_specs_name_the_field(
    ops_cluster: LocalCluster, table: tuple[Path, np.ndarray]
) -> None:
    path, _ = table
    with ops_cluster.client() as client:
        with pytest.raises(JobSpecError, match=r"key: column 'price' does not exist in .*table"):
            client.submit("groupby", path, key="price")
        with pytest.raises(JobSpecError, match=r"boundaries: not sorted: 1\.0 at index 1"):
            client.submit("column_stats", path, strategy="range", key=0, boundaries=[5, 1])
        with pytest.raises(
            JobSpecError, match="strategy: value_counts cannot run with strategy 'columns'"
        ):
            client.submit("value_counts", path, key=0, strategy="columns")
        with pytest.raises(JobSpecError, match=r"sm_ops\.not_an_op is not an op"):
            client.submit("sm_ops:not_an_op", path)
        with pytest.raises(JobSpecError, match="start the master and every worker with `--import"):
            client.submit("elsewhere:op", path)
        with pytest.raises(JobSpecError, match="output: row_stats writes one row per input row"):
            client.submit("row_stats", path)


def test_hash_assignment_is_identical_across_processes_and_hash_seeds() -> None:
    # Given the same keys hashed in two processes with different PYTHONHASHSEED
    code = (
        "import json, numpy as np\n"
        "from shardmill.data.sharding import hash_buckets\n"
        "keys = ['alpha', 'beta', 'gamma', 'delta'] * 3 + [f'k{i}' for i in range(500)]\n"
        "print(json.dumps({'buckets': hash_buckets(np.array(keys), 7).tolist()\n"
        "  + hash_buckets(np.arange(-500, 500), 7).tolist(),\n"
        "  'builtin': [hash(k) % 7 for k in keys]}))\n"
    )
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        )
        outs.append(json.loads(proc.stdout))
    # Then the stable hash assigns every key to the same shard; Python's hash() would not
    assert outs[0]["buckets"] == outs[1]["buckets"]
    assert outs[0]["builtin"] != outs[1]["builtin"]


def test_plan_prints_the_shards_and_the_skew(table: tuple[Path, np.ndarray]) -> None:
    path, _ = table
    report = json.loads(
        run_cli("plan", "groupby", str(path), "--strategy", "range", "--key", "0", "--json").stdout
    )
    assert report["strategy"] == "range" and report["rows"] == ROWS
    assert len(report["shards"]) == len(report["boundaries"]) + 1 == 4
    assert report["skew"] >= 1.0 and report["estimated"] is True
    assert report["shards"][1]["key_low"] == report["boundaries"][0]
    rows = [s["rows"] for s in report["shards"]]
    assert abs(sum(rows) - ROWS) <= len(rows)
    exact = json.loads(
        run_cli("plan", "column_stats", str(path), "--rows-per-shard", "60000", "--json").stdout
    )
    assert [s["rows"] for s in exact["shards"]] == [60_000, 60_000, 60_000, 20_000]
    assert exact["skew"] == pytest.approx(60_000 / 50_000)
    bad = run_cli(
        "plan",
        "column_stats",
        str(path),
        "--strategy",
        "range",
        "--key",
        "0",
        "--boundaries",
        "3,2",
    )
    assert bad.returncode == BAD_SPEC and "boundaries: not sorted" in bad.stderr


def test_cli_submit_takes_the_spec_flags(ops_cluster: LocalCluster) -> None:
    flags = ["--key", "0", "--strategy", "hash", "--shards", "3", "--wait"]
    synthetic = ["--synthetic", "rows=100000,cols=3,keys=7"]
    out = cli_json("submit", "value_counts", *synthetic, *flags, master=ops_cluster)
    result = out["result"]
    assert result["keys"] == list(range(7)) and sum(result["counts"]) == 100_000
    assert result["provenance"]["strategy"] == "hash"


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def _reset_peak(pid: int) -> None:
    # "5" resets VmHWM to the current RSS (Linux 4.0+), so the peak is this job's own
    with contextlib.suppress(OSError):  # then VmHWM is the peak since start: stricter
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_master_memory_stays_flat_while_reducing_a_larger_dataset(
    ops_cluster: LocalCluster, tmp_path: Path
) -> None:
    # Given a 400 MB .npy (4x the allowed growth) and a master that has already served jobs
    path = tmp_path / "big.npy"
    rows, cols = 5_000_000, 10
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, cols))
    step = 500_000
    for start in range(0, rows, step):
        big[start : start + step] = np.arange(start, start + step)[:, None] % 1000 + np.arange(cols)
    big.flush()
    del big
    assert ops_cluster.master is not None
    pid = ops_cluster.master.pid
    try:
        with ops_cluster.client() as client:
            client.submit("column_stats", path, shards=2).result(timeout=60)  # warm up
            _reset_peak(pid)
            before = _memory_kb(pid, "VmRSS")
            # When it is reduced in 40 shards
            stats = client.submit("column_stats", path, shards=40).result(timeout=120)
        peak = _memory_kb(pid, "VmHWM")
    finally:
        path.unlink()
    # Then the answer is right and the master's peak grew by less than 100 MB
    assert stats["count"] == rows
    np.testing.assert_allclose(stats["mean"], 499.5 + np.arange(cols))
    growth_mb = (max(peak, before) - before) / 1024
    print(f"master RSS before {before / 1024:.1f} MB, peak {peak / 1024:.1f} MB")
    assert growth_mb < 100, f"master memory grew {growth_mb:.0f} MB"
