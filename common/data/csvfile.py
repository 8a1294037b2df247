"""CSV datasets: a header and typed columns from a sample, byte ranges realigned to lines.

A shard owns the lines that *begin* inside its byte range [start, stop): it skips the partial
line it starts in and finishes the line it ends in, so shards tile the file exactly. Rows are
lines: a quoted field may hold the delimiter but not a newline.
"""

from __future__ import annotations

import csv
import itertools
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from shardmill.data.paths import is_url
from shardmill.data.remote import (
    RemoteError,
    RemoteFile,
    file_size,
    open_binary,
    remote_error,
)
from shardmill.errors import BadInput, JobSpecError
from shardmill.wire.spec import ColumnType, CsvSource

SAMPLE_BYTES = 1 << 20
CHUNK_BYTES = 8 << 20


@dataclass(frozen=True)
class CsvLayout:
    """What the master learns from a CSV's first megabyte: never the whole file."""

    path: str
    size: int
    data_start: int  # the first byte after the header line
    names: list[str]
    dtypes: list[ColumnType]
    line_bytes: float  # mean bytes per data line in the sample

    def source(self, start: int, stop: int, delimiter: str) -> CsvSource:
        return CsvSource(
            path=self.path,
            start=start,
            stop=stop,
            names=self.names,
            dtypes=self.dtypes,
            delimiter=delimiter,
        )


def describe_csv(
    path: str, *, header: bool, delimiter: str, dtypes: Mapping[str, ColumnType]
) -> CsvLayout:
    """Read the header and a sample; infer float64 or str per column, overridden by `dtypes`."""
    try:
        size = file_size(path)
        if is_url(path) and size > 1:
            RemoteFile(path).read(1, 2)  # ranges past byte 0 work: each worker reads its own
        with open_binary(path) as f:
            first = f.readline()
            head = f.read(SAMPLE_BYTES)
            head += f.readline()
    except RemoteError as e:
        raise JobSpecError(f"dataset: {e}") from e
    except Exception as e:
        if is_url(path):  # fsspec's own errors: a server without ranges, a 403, a 5xx
            raise JobSpecError(f"dataset: {remote_error(path, e)}") from e
        if isinstance(e, OSError):
            raise JobSpecError(f"dataset: {path} cannot be read: {e.strerror or e}") from e
        raise
    first_fields = _split(_decode_sample(first, path), delimiter)
    if not first_fields:
        raise JobSpecError(f"dataset: {path} is empty; a CSV needs at least a header line")
    if header:
        names, data_start, sample = [f.strip() for f in first_fields], len(first), head
    else:
        names = [str(i) for i in range(len(first_fields))]
        data_start, sample = 0, first + head
    _check_names(path, names)
    rows = _sample_rows(_decode_sample(sample, path, 2 if header else 1), delimiter, len(names))
    types = [_infer([r[j] for r in rows]) for j in range(len(names))]
    types = _override(path, names, types, dtypes)
    lines = max(1, sample.count(b"\n"))
    return CsvLayout(path, size, data_start, names, types, max(1.0, len(sample) / lines))


def byte_splits(layout: CsvLayout, parts: int) -> list[tuple[int, int]]:
    """`parts` near-equal byte ranges over the data (after the header)."""
    span = max(0, layout.size - layout.data_start)
    n = max(1, min(parts, span))
    cuts = layout.data_start + np.linspace(0, span, n + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in itertools.pairwise(cuts)]


def sample_columns(
    layout: CsvLayout, columns: list[int], n: int, delimiter: str
) -> list[np.ndarray]:
    """About `n` rows of `columns` from 8 evenly spaced windows; malformed windows are skipped."""
    windows = byte_splits(layout, 8)
    want = max(1, n // len(windows))
    got: list[list[np.ndarray]] = [[] for _ in columns]
    for start, stop in windows:
        end = min(stop, start + int(want * layout.line_bytes * 1.5) + 1)
        try:
            for chunk in read_chunks(layout.source(start, end, delimiter)):
                for j, c in enumerate(columns):
                    got[j].append(chunk.columns[c])
        except BadInput:
            continue  # a sample is best-effort; the shard that owns the bad line reports it
    return [np.concatenate(g) if g else np.zeros(0) for g in got]


# ---- reading a shard (workers) ----------------------------------------------------------------


@dataclass(frozen=True)
class CsvChunk:
    offset: int  # byte offset of the chunk's first line
    columns: list[np.ndarray]

    @property
    def rows(self) -> int:
        return len(self.columns[0]) if self.columns else 0


def read_chunks(source: CsvSource, chunk_bytes: int = CHUNK_BYTES) -> Iterator[CsvChunk]:
    """Parse the lines that begin in [start, stop), a chunk of about `chunk_bytes` at a time."""
    try:
        f = open_binary(source.path)
    except RemoteError as e:
        raise BadInput(str(e), retryable=e.transient) from e
    except OSError as e:
        raise BadInput(f"{source.path} cannot be read: {e.strerror or e}", retryable=True) from e
    try:
        yield from _read_lines(f, source, chunk_bytes)
    except BadInput:
        raise
    except Exception as e:  # behind a URL: a cut body or a dropped connection, never data
        if not is_url(source.path):
            raise
        err = remote_error(source.path, e)
        raise BadInput(str(err), retryable=err.transient) from e
    finally:
        f.close()


def _read_lines(f: BinaryIO, source: CsvSource, chunk_bytes: int) -> Iterator[CsvChunk]:
    """The chunks of whole lines that begin in [start, stop): reads no further than the last
    line that begins before `stop` (a shard behind a URL fetches its own bytes only)."""
    pos = _first_line_at(f, source.start)
    while pos < source.stop:
        buf = f.read(min(chunk_bytes, source.stop - pos))
        if not buf:
            return
        if not buf.endswith(b"\n"):
            buf += f.readline()  # finish the last line
        if pos + len(buf) > source.stop:
            cut = buf.find(b"\n", source.stop - pos - 1)
            buf = buf if cut < 0 else buf[: cut + 1]
        yield CsvChunk(pos, _parse(buf, pos, source))
        pos += len(buf)
        f.seek(pos)


def _first_line_at(f: BinaryIO, start: int) -> int:
    """Seek to the first line that begins at or after `start`; return its offset."""
    if start == 0:
        f.seek(0)
        return 0
    f.seek(start - 1)
    f.readline()  # the rest of the line that byte start-1 belongs to
    return f.tell()


def _parse(buf: bytes, offset: int, source: CsvSource) -> list[np.ndarray]:
    try:
        text = buf.decode("utf-8")
    except UnicodeDecodeError as e:
        at = _where(source.path, offset + e.start)
        raise BadInput(f"{source.path} {at}: not valid UTF-8 ({e.reason})") from e
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = list(csv.reader([ln.rstrip("\r") for ln in lines], delimiter=source.delimiter))
    width = len(source.names)
    keep = []
    for i, row in enumerate(rows):
        if len(row) == width:
            keep.append(row)
        elif row:  # a blank line is skipped; any other width is an error
            raise _bad_width(source, lines, i, offset, len(row))
    cols = list(zip(*keep, strict=True)) if keep else [() for _ in range(width)]
    out = []
    for j, values in enumerate(cols):
        out.append(_convert(values, j, source=source, lines=lines, offset=offset, rows=rows))
    return out


def _bad_width(source: CsvSource, lines: list[str], i: int, offset: int, got: int) -> BadInput:
    at = _where(source.path, _byte_of(lines, i, offset))
    return BadInput(
        f"{source.path} {at}: expected {len(source.names)} fields "
        f"({', '.join(source.names)}), got {got}: {lines[i][:120]!r}"
    )


def _convert(
    values: tuple[str, ...],
    j: int,
    *,
    source: CsvSource,
    lines: list[str],
    offset: int,
    rows: list[list[str]],
) -> np.ndarray:
    kind = source.dtypes[j]
    arr = np.array(values, dtype=str)
    if kind == "str":
        return arr
    if kind == "float64":
        arr = np.where(np.char.str_len(np.char.strip(arr)) == 0, "nan", arr)  # blank: missing
    try:
        return arr.astype(np.float64 if kind == "float64" else np.int64)
    except ValueError:
        pass
    # Slow path, only on error: find the first bad value and name its line and field.
    parse = float if kind == "float64" else int
    full = [i for i, r in enumerate(rows) if len(r) == len(source.names)]
    for i in full:
        value = rows[i][j]
        try:
            parse(value.strip() or ("nan" if kind == "float64" else value))
        except ValueError:
            at = _where(source.path, _byte_of(lines, i, offset))
            raise BadInput(
                f"{source.path} {at} field {source.names[j]!r} (column {j}): "
                f"{value!r} is not {kind}; {_declare(source.names[j], kind)}"
            ) from None
    raise BadInput(f"{source.path}: column {source.names[j]!r} cannot be read as {kind}")


def _declare(name: str, kind: ColumnType) -> str:
    """The fix for a value that is not of its column's type, as both doors spell it."""
    hint = "float64" if kind == "int64" else "str"
    return (
        f"fix the value, or declare the column {hint}: `--dtype {shlex.quote(f'{name}={hint}')}` "
        f"on the command line, dtypes={{{name!r}: {hint!r}}} in Python"
    )


def _byte_of(lines: list[str], i: int, offset: int) -> int:
    return offset + sum(len(ln.encode()) + 1 for ln in lines[:i])


def _where(path: str, byte: int) -> str:
    """Where a bad byte is, for a message: its line, or (behind a URL, where counting lines
    would mean fetching everything before it) its byte offset."""
    return f"byte {byte}" if is_url(path) else f"line {line_number(path, byte)}"


def line_number(path: str, byte: int) -> int:
    """1-based line number of the byte at `byte` (counts newlines before it; errors only)."""
    count = 0
    with open(path, "rb") as f:
        left = byte
        while left > 0:
            buf = f.read(min(left, CHUNK_BYTES))
            if not buf:
                break
            count += buf.count(b"\n")
            left -= len(buf)
    return count + 1


# ---- inference ------------------------------------------------------------------------------


def _decode_sample(raw: bytes, path: str, first_line: int = 1) -> str:
    """The sample as text (whole lines: it never ends inside a character); a byte that is not
    UTF-8 is a JobSpecError naming its line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw[: e.start].count(b"\n")
        raise JobSpecError(
            f"dataset: {path} is not UTF-8 text (line {line}: byte 0x{raw[e.start]:02x}, "
            f"{e.reason}); convert it to UTF-8, e.g. `iconv -f LATIN1 -t UTF-8 IN > OUT`"
        ) from None


def _split(line: str, delimiter: str) -> list[str]:
    rows = list(csv.reader([line.rstrip("\r\n")], delimiter=delimiter))
    return rows[0] if rows else []


def _sample_rows(text: str, delimiter: str, width: int) -> list[list[str]]:
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    return [r for r in csv.reader(lines, delimiter=delimiter) if len(r) == width]


def _infer(values: list[str]) -> ColumnType:
    for v in values:
        if v.strip() == "":
            continue
        try:
            float(v)
        except ValueError:
            return "str"
    return "float64"


def _check_names(path: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise JobSpecError(
                f"dataset: {path} has two columns named {name!r}; rename one, or read it "
                "with header=False (--no-header) and refer to columns by index"
            )
        seen.add(name)


def _override(
    path: str, names: list[str], types: list[ColumnType], dtypes: Mapping[str, ColumnType]
) -> list[ColumnType]:
    unknown = sorted(set(dtypes) - set(names))
    if unknown:
        raise JobSpecError(
            f"dtypes: {path} has no column(s) {', '.join(map(repr, unknown))}; "
            f"its columns are: {', '.join(names)}"
        )
    return [dtypes.get(n, t) for n, t in zip(names, types, strict=True)]
