"""Reading one shard on a worker: a chunk of rows at a time, so a shard never has to fit in memory.

Each chunk becomes a `Block` (the op's value columns and the key), filtered to the shard's
hash or range bucket when it has one. Read failures become BadInput naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from shardmill.data import synthetic
from shardmill.data.base import Chunk
from shardmill.data.csvfile import read_chunks
from shardmill.data.parquet import parquet_chunks
from shardmill.data.paths import is_url
from shardmill.data.remote import RemoteError, RemoteNpy
from shardmill.data.sharding import hash_buckets, range_buckets
from shardmill.errors import BadInput
from shardmill.ops.base import Block
from shardmill.wire.spec import (
    Bucket,
    CsvSource,
    NpySource,
    ParquetSource,
    ScanShard,
    SyntheticSource,
    ValueSource,
)

CHUNK_BYTES = 32 << 20
MAX_MAPS = 64
_MAPS: dict[tuple[str, int, int], np.ndarray] = {}


def iter_blocks(desc: ScanShard, values: np.ndarray | None = None) -> Iterator[Block]:
    """The shard's blocks, at least one (empty when the shard holds no rows)."""
    cols = desc.columns
    seen = False
    for chunk in _chunks(desc, values):
        picked = list(range(chunk.width)) if cols is None else cols
        block = Block(
            values=chunk.values(picked),
            columns=np.asarray(picked, dtype=np.int64),
            keys=None if desc.key is None else np.asarray(chunk.column(desc.key)),
            first_row=chunk.first_row,
        )
        if desc.bucket is not None:
            block = _filter(block, desc.bucket)
        seen = True
        yield block
    if not seen:
        picked = cols or []
        keys = None if desc.key is None else np.zeros(0)
        yield Block(np.zeros((0, len(picked))), np.asarray(picked, dtype=np.int64), keys, -1)


def iter_chunks(desc: ScanShard) -> Iterator[Chunk]:
    """The shard's rows as the format reads them, a chunk at a time (pipelines build tables)."""
    return _chunks(desc, None)


def _filter(block: Block, bucket: Bucket) -> Block:
    assert block.keys is not None, "a bucketed shard always reads its key"
    if bucket.how == "hash":
        mine = hash_buckets(block.keys, bucket.count) == bucket.index
    else:
        mine = range_buckets(block.keys, bucket.boundaries) == bucket.index
    return Block(block.values[mine], block.columns, block.keys[mine], first_row=-1)


def _chunks(desc: ScanShard, values: np.ndarray | None) -> Iterator[Chunk]:
    src = desc.source
    if isinstance(src, NpySource):
        return _npy_chunks(src, desc.first_row)
    if isinstance(src, CsvSource):
        return (Chunk(-1, columns=c.columns) for c in read_chunks(src))
    if isinstance(src, SyntheticSource):
        return _synthetic_chunks(src)
    if isinstance(src, ValueSource):
        if values is None:
            raise BadInput("the shard's rows did not arrive with its task")
        return _matrix_chunks(_as_2d(np.asarray(values)), desc.first_row)
    assert isinstance(src, ParquetSource)
    return parquet_chunks(src)


def _npy_chunks(src: NpySource, first_row: int) -> Iterator[Chunk]:
    row = first_row
    for piece in src.pieces:
        if is_url(piece.path):
            yield from _url_chunks(piece.path, piece.start, piece.stop)
            row += piece.stop - piece.start
            continue
        data = _mapped(piece.path)
        if piece.stop > data.shape[0]:
            raise BadInput(
                f"{piece.path} has {data.shape[0]} rows, the shard needs rows up to "
                f"{piece.stop}; was the file replaced after the job was submitted?"
            )
        yield from _matrix_chunks(data[piece.start : piece.stop], row)
        row += piece.stop - piece.start


def _url_chunks(url: str, start: int, stop: int) -> Iterator[Chunk]:
    """The rows [start, stop) of a .npy behind a URL, a range request per chunk."""
    try:
        npy = RemoteNpy.open(url, probe=False)  # per shard: the file may have been replaced
        step = max(1, CHUNK_BYTES // max(1, npy.row_bytes))
        for a in range(start, stop, step):
            yield Chunk(a, matrix=npy.rows(a, min(stop, a + step)))
    except RemoteError as e:  # a 404 now is for good; a cut body may pass on another try
        raise BadInput(str(e), retryable=e.transient) from e


def _matrix_chunks(data: np.ndarray, first_row: int) -> Iterator[Chunk]:
    step = max(1, CHUNK_BYTES // max(1, data.shape[1] * data.dtype.itemsize))
    for start in range(0, data.shape[0], step):
        yield Chunk(first_row + start, matrix=data[start : start + step])


def _synthetic_chunks(src: SyntheticSource) -> Iterator[Chunk]:
    # Chunks end on block boundaries, so each generator block is built once.
    per_block = synthetic.BLOCK_ROWS * src.spec.cols * 8
    step = synthetic.BLOCK_ROWS * max(1, CHUNK_BYTES // per_block)
    start = src.start
    while start < src.stop:
        stop = min(src.stop, (start // step + 1) * step)
        yield Chunk(start, matrix=synthetic.rows(src.spec, start, stop))
        start = stop


def _mapped(path: str) -> np.ndarray:
    # Memory-map once per child process and file version; the page cache is shared by all.
    try:
        st = os.stat(path)
        key = (path, st.st_ino, st.st_mtime_ns)
        if key not in _MAPS:
            if len(_MAPS) >= MAX_MAPS:  # a long-lived child sees many files: forget the oldest
                del _MAPS[next(iter(_MAPS))]
            _MAPS[key] = _as_2d(np.load(path, mmap_mode="r", allow_pickle=False))
    except OSError as e:
        raise BadInput(f"{path} cannot be read: {e.strerror or e}", retryable=True) from e
    except ValueError as e:
        raise BadInput(f"{path} is not a readable .npy file: {e}") from e
    return _MAPS[key]


def _as_2d(arr: np.ndarray) -> np.ndarray:
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr
