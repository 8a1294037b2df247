"""Parquet datasets, an optional extra: `pip install 'shardmill[parquet]'` brings pyarrow.

Shards are runs of row groups. The master reads only the footer (and a few row groups for a
sample); a worker reads its own row groups.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from shardmill.data.base import Chunk, Dataset, Part
from shardmill.data.paths import check_path
from shardmill.errors import BadInput, JobSpecError
from shardmill.wire.spec import ParquetSource


def _pq() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise JobSpecError(
            "format: Parquet needs pyarrow on the master and the workers: "
            "pip install 'shardmill[parquet]'"
        ) from e
    return pq


class ParquetDataset(Dataset):
    format = "parquet"

    def __init__(self, path: str) -> None:
        check_path(path, directory=False)
        try:
            meta = _pq().ParquetFile(path).metadata
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise JobSpecError(f"dataset: {path} is not a readable Parquet file: {e}") from e
        schema = meta.schema.to_arrow_schema()
        self.path = self.label = path
        self.names = list(schema.names)
        self.dtypes = [_numpy_dtype(f.type) for f in schema]
        self.group_rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.group_bytes = [meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)]
        self.offsets = [0, *itertools.accumulate(self.group_rows)]
        self.rows = self.offsets[-1]

    def split(
        self, *, shards: int | None, rows_per_shard: int | None, target_bytes: int | None
    ) -> list[Part]:
        groups = len(self.group_rows)
        if rows_per_shard:
            n = math.ceil(self.rows / rows_per_shard)
        elif target_bytes:
            n = math.ceil(sum(self.group_bytes) / target_bytes)
        else:
            n = shards or 1
        n = max(1, min(n, groups))
        # Cut where the cumulative rows come closest to equal shares.
        targets = np.linspace(0, self.rows, n + 1)[1:-1]
        cuts = np.searchsorted(self.offsets, targets).tolist()
        bounds = sorted({0, groups, *cuts})
        return [self._part(list(range(a, b))) for a, b in itertools.pairwise(bounds)]

    def whole(self) -> Part:
        return self._part(list(range(len(self.group_rows))))

    def sample(self, columns: list[int], n: int) -> tuple[np.ndarray | None, list[np.ndarray]]:
        groups = len(self.group_rows)
        picked = np.unique(np.linspace(0, max(0, groups - 1), min(groups, 4)).astype(int))
        chunks = list(parquet_chunks(ParquetSource(path=self.path, row_groups=picked.tolist())))
        cols = [
            np.concatenate([c.column(i) for c in chunks]) if chunks else np.zeros(0)
            for i in columns
        ]
        step = max(1, len(cols[0]) // n) if cols and len(cols[0]) else 1
        return None, [c[::step][:n] for c in cols]

    def _part(self, groups: list[int]) -> Part:
        rows = sum(self.group_rows[g] for g in groups)
        nbytes = sum(self.group_bytes[g] for g in groups)
        first = self.offsets[groups[0]] if groups else 0
        return Part(ParquetSource(path=self.path, row_groups=groups), first, rows, nbytes)


def parquet_chunks(src: ParquetSource) -> Iterator[Chunk]:
    """One chunk per row group, every column as a NumPy array (text as str)."""
    try:
        # Pages written with checksums are checked: a corrupt page is an error, never values.
        pf = _pq().ParquetFile(src.path, page_checksum_verification=True)
        for g in src.row_groups:
            table = pf.read_row_group(g)
            yield Chunk(-1, columns=[_to_numpy(col) for col in table.columns])
    except JobSpecError as e:
        raise BadInput(str(e), retryable=True) from e
    except OSError as e:
        if "checksum" in str(e):  # the bytes on disk are wrong: reading again cannot help
            raise BadInput(f"{src.path} is corrupt (row groups {src.row_groups}): {e}") from e
        raise BadInput(f"{src.path} cannot be read: {e}", retryable=True) from e
    except ValueError as e:
        raise BadInput(f"{src.path} is not a readable Parquet file: {e}") from e


def _to_numpy(column: Any) -> np.ndarray:
    arr = np.asarray(column.to_numpy(zero_copy_only=False))
    return arr.astype(str) if arr.dtype.kind == "O" else arr


def _numpy_dtype(arrow_type: Any) -> np.dtype[Any]:
    import pyarrow as pa

    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return np.dtype("U")
    if pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type):
        numeric: np.dtype[Any] = np.dtype(arrow_type.to_pandas_dtype())
        return numeric
    if pa.types.is_boolean(arrow_type):
        return np.dtype(bool)
    return np.dtype(object)  # dates, lists, structs: no op reads them yet
