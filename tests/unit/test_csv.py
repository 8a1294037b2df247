"""CSV datasets: byte ranges realigned to lines tile the file; bad rows name their line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from inprocess import run_spec

from shardmill.data.csvfile import byte_splits, describe_csv, read_chunks
from shardmill.data.plan import build_plan
from shardmill.errors import BadInput, JobSpecError
from shardmill.wire.spec import JobSpec

# Text with a letter (blank fields are missing values); commas force quoting
WORDS = st.text(alphabet="abcxyz ,;-", min_size=1, max_size=8).filter(lambda w: w.strip(" ,;-"))


def write_csv(path: Path, rows: list[tuple[int, str, float]], newline: str = "\n") -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=newline)
    writer.writerow(["id", "name", "price"])
    writer.writerows(rows)
    path.write_text(buf.getvalue())


def read_all(path: Path, shards: int, chunk_bytes: int) -> list[tuple[float, str, float]]:
    layout = describe_csv(str(path), header=True, delimiter=",", dtypes={})
    out = []
    for a, b in byte_splits(layout, shards):
        for chunk in read_chunks(layout.source(a, b, ","), chunk_bytes=chunk_bytes):
            ids, names, prices = chunk.columns
            out += list(zip(ids.tolist(), names.tolist(), prices.tolist(), strict=True))
    return out


@settings(max_examples=100, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-(10**6), 10**6), WORDS, st.floats(-1e6, 1e6)), max_size=60
    ),
    shards=st.integers(1, 40),
    chunk_bytes=st.integers(1, 200),
    crlf=st.booleans(),
)
def test_byte_ranges_tile_the_file_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, str, float]],
    shards: int,
    chunk_bytes: int,
    crlf: bool,
) -> None:
    # Given a CSV with a header, quoted fields and LF or CRLF line ends
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    write_csv(path, rows, "\r\n" if crlf else "\n")
    # When it is cut into any number of byte ranges, read in chunks of any size
    got = read_all(path, shards, chunk_bytes)
    # Then every row is read exactly once, in file order
    assert got == [(float(i), n, p) for i, n, p in rows]


def test_header_and_types_are_inferred_from_a_sample(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [(1, "a", 1.5), (2, "b", 2.5)])
    layout = describe_csv(str(tmp_path / "t.csv"), header=True, delimiter=",", dtypes={})
    assert layout.names == ["id", "name", "price"]
    assert layout.dtypes == ["float64", "str", "float64"]
    declared = describe_csv(
        str(tmp_path / "t.csv"), header=True, delimiter=",", dtypes={"id": "int64"}
    )
    assert declared.dtypes[0] == "int64"
    with pytest.raises(JobSpecError, match=r"no column\(s\) 'nope'; its columns are: id, name"):
        describe_csv(str(tmp_path / "t.csv"), header=True, delimiter=",", dtypes={"nope": "str"})


def test_a_row_with_the_wrong_number_of_fields_names_its_line(tmp_path: Path) -> None:
    lines = ["id,name,price"] + [f"{i},n{i},{i}.5" for i in range(1, 200)]
    lines[137] = "137,only two"
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    layout = describe_csv(str(tmp_path / "bad.csv"), header=True, delimiter=",", dtypes={})
    with pytest.raises(BadInput, match=r"bad\.csv line 138: expected 3 fields \(id, name, price\)"):
        for a, b in byte_splits(layout, 3):
            list(read_chunks(layout.source(a, b, ","), chunk_bytes=64))


def test_a_value_of_the_wrong_type_names_its_line_and_field(tmp_path: Path) -> None:
    # (declared float64 here; beyond the first megabyte inference could not have seen it)
    (tmp_path / "t.csv").write_text("id,price\n1,2.5\n2,3.5\n3,oops\n")
    layout = describe_csv(
        str(tmp_path / "t.csv"), header=True, delimiter=",", dtypes={"price": "float64"}
    )
    source = layout.source(layout.data_start, layout.size, ",")
    with pytest.raises(BadInput, match=r"line 4 field 'price' \(column 1\): 'oops' is not float"):
        list(read_chunks(source))


def test_csv_ops_match_numpy_and_text_columns_are_keys(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = np.array(["pear", "fig", "kiwi", "lime"])[rng.integers(0, 4, 3000)]
    prices = rng.normal(5, 2, 3000)
    (tmp_path / "t.csv").write_text(
        "name,price,qty\n"
        + "".join(
            f"{n},{p!r},{i}\n" for i, (n, p) in enumerate(zip(names, prices.tolist(), strict=True))
        )
    )
    base = JobSpec(op="column_stats", dataset=str(tmp_path / "t.csv"), shards=5)
    stats = run_spec(base)  # the text column is skipped: numeric columns only
    np.testing.assert_allclose(stats["mean"], [prices.mean(), 1499.5], rtol=1e-12)
    counts = run_spec(base.model_copy(update={"op": "value_counts", "key": "name"}))
    want = dict(zip(*np.unique(names, return_counts=True), strict=True))
    assert dict(zip(counts["keys"].tolist(), counts["counts"].tolist(), strict=True)) == want
    grouped = run_spec(
        base.model_copy(update={"op": "groupby", "key": "name", "strategy": "hash", "shards": 3})
    )
    for key, total in zip(grouped["keys"].tolist(), grouped["sum"][:, 0], strict=True):
        assert total == pytest.approx(prices[names == key].sum(), rel=1e-12)


def test_csv_spec_errors_name_the_column_and_the_fix(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [(1, "a", 1.5)])
    spec = JobSpec(op="groupby", dataset=str(tmp_path / "t.csv"), key="colour")
    with pytest.raises(JobSpecError, match=r"key: column 'colour' does not exist in .*t\.csv"):
        build_plan(spec)
    with pytest.raises(JobSpecError, match="needs numeric columns; column 'name'"):
        build_plan(spec.model_copy(update={"op": "column_stats", "columns": ["name"], "key": None}))
    with pytest.raises(JobSpecError, match="strategy 'range' needs a numeric key"):
        build_plan(spec.model_copy(update={"key": "name", "strategy": "range"}))
    with pytest.raises(JobSpecError, match=r"row_stats .* use \.npy, npy_dir"):
        build_plan(spec.model_copy(update={"op": "row_stats", "key": None}))
    with pytest.raises(JobSpecError, match="does not exist on the master"):
        build_plan(spec.model_copy(update={"dataset": str(tmp_path / "missing.csv")}))
