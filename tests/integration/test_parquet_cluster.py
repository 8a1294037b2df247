"""Parquet end to end on a real cluster: shards are runs of row groups, answers equal NumPy's,
and a file that is not Parquet, a corrupt page or a missing column each end in a clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from shardmill import JobFailed, JobSpecError, LocalCluster

ROWS, GROUP = 30_000, 2_000  # 15 row groups
CITIES = np.array(["oslo", "lima", "pune", "kyiv"])


@pytest.fixture(scope="module")
def weather(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """A multi-row-group file with a text key, two float columns and an int column."""
    rng = np.random.default_rng(7)
    cols = {
        "city": CITIES[rng.integers(0, len(CITIES), ROWS)],
        "temp": rng.normal(10, 5, ROWS),
        "rain": rng.random(ROWS),
        "n": rng.integers(-1000, 1000, ROWS),
    }
    path = tmp_path_factory.mktemp("parquet") / "weather.parquet"
    pq.write_table(pa.table(cols), path, row_group_size=GROUP, write_page_checksum=True)
    assert pq.ParquetFile(path).metadata.num_row_groups == ROWS // GROUP
    return path, cols


def test_column_stats_and_groupby_over_row_groups_equal_numpy(
    ops_cluster: LocalCluster, weather: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, cols = weather
    numeric = np.column_stack([cols["temp"], cols["rain"], cols["n"]])
    with ops_cluster.client() as client:
        # When column_stats runs in 5 shards and groupby by city in 3 hash shards
        stats_job = client.submit("column_stats", path, shards=5)
        stats = stats_job.result(timeout=120)
        grouped = client.submit("groupby", path, key="city", strategy="hash", shards=3).result(
            timeout=120
        )
        info = stats_job.status(shards=True)
    # Then the statistics equal NumPy's over the numeric columns, each shard merged once
    assert stats["count"] == ROWS and stats["shards_merged"] == 5
    np.testing.assert_allclose(stats["mean"], numeric.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats["std"], numeric.std(0), rtol=1e-9)
    np.testing.assert_allclose(stats["min"], numeric.min(0))
    np.testing.assert_allclose(stats["max"], numeric.max(0))
    assert info.shards is not None and [s.merged for s in info.shards] == [1] * 5
    # And every city's count and sums equal NumPy's
    assert sorted(grouped["keys"].tolist()) == sorted(CITIES.tolist())
    for i, city in enumerate(grouped["keys"].tolist()):
        rows = cols["city"] == city
        assert grouped["count"][i, 0] == rows.sum()
        np.testing.assert_allclose(grouped["sum"][i], numeric[rows].sum(0), rtol=1e-12)


def test_a_file_that_is_not_parquet_is_refused_at_submit_by_name(
    ops_cluster: LocalCluster, tmp_path: Path
) -> None:
    bad = tmp_path / "broken.parquet"
    bad.write_bytes(b"PAR1 this is not a parquet file")
    with ops_cluster.client() as client, pytest.raises(JobSpecError) as err:
        client.submit("column_stats", bad, shards=2)
    assert "broken.parquet is not a readable Parquet file" in str(err.value)


def test_a_missing_column_is_refused_naming_the_columns_there_are(
    ops_cluster: LocalCluster, weather: tuple[Path, dict[str, np.ndarray]]
) -> None:
    path, _ = weather
    with ops_cluster.client() as client, pytest.raises(JobSpecError) as err:
        client.submit("column_stats", path, columns=["pressure"])
    assert "column 'pressure' does not exist" in str(err.value)
    assert "city, temp, rain, n" in str(err.value)


def test_a_corrupt_page_fails_the_job_naming_the_file_never_a_wrong_answer(
    ops_cluster: LocalCluster, tmp_path: Path, weather: tuple[Path, dict[str, np.ndarray]]
) -> None:
    # Given a copy of the file with bytes of row group 3's first column overwritten
    path, _ = weather
    corrupt = tmp_path / "corrupt.parquet"
    data = bytearray(path.read_bytes())
    chunk = pq.ParquetFile(path).metadata.row_group(3).column(1)
    at = chunk.data_page_offset + chunk.total_compressed_size // 2
    data[at : at + 16] = b"\xff" * 16
    corrupt.write_bytes(bytes(data))
    # When column_stats runs over it / Then the job fails, naming the file and the row groups
    with ops_cluster.client() as client:
        job = client.submit("column_stats", corrupt, shards=5, max_attempts=2)
        with pytest.raises(JobFailed) as err:
            job.result(timeout=120)
    assert "corrupt.parquet is corrupt" in str(err.value) and "checksum" in str(err.value)
