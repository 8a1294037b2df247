"""What a job asks for, and what each shard reads: the job spec and the shard descriptors.

Frozen pydantic models like every message (`protocol.py` carries them); the data layer plans
descriptors from a spec and the workers read by them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from shardmill.errors import JobSpecError

FunctionRef = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description='a function named as "pkg.module:function"',
    ),
]

# A pipeline's stage task travels as a map job of this built-in function (shardmill.pipeline).
STAGE_FUNCTION = "shardmill.pipeline:stage"


class Frozen(BaseModel):
    """The base of every wire model: immutable, and no field it does not name."""

    model_config = ConfigDict(frozen=True, extra="forbid")


Column = int | str  # a column index, or a CSV header name

DatasetFormat = Literal["npy", "npy_dir", "csv", "parquet", "synthetic", "value"]
Strategy = Literal["rows", "columns", "hash", "range"]
ColumnType = Literal["int64", "float64", "str"]  # CSV column types


class SyntheticSpec(Frozen):
    """A seeded generator: each block of rows is a pure function of (seed, block index)."""

    rows: int = Field(ge=0, le=10**12)
    cols: int = Field(default=4, ge=1, le=10_000)
    seed: int = Field(default=0, ge=0)
    keys: int | None = Field(
        default=None, ge=1, description="when set, column 0 holds integer keys 0..keys-1"
    )


class JobSpec(Frozen):
    """What to run. `op="map"` calls `function` on each argument tuple; other ops read `dataset`."""

    op: str = Field(min_length=1, description='"map" or a built-in op such as "column_stats"')
    function: FunctionRef | None = None
    dataset: str | None = Field(default=None, description="path to a .npy file, as workers see it")
    shards: int | None = Field(default=None, ge=1, le=1_000_000, description="number of shards")
    max_attempts: int = Field(default=3, ge=1, le=100)
    task_timeout: float | None = Field(default=None, gt=0)
    allow_failures: int = Field(default=0, ge=0)
    name: str = ""
    # Set by the master from the client's authenticated key (whatever a client sends here).
    owner: str = ""
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="higher first, within its client's share"
    )
    speculate_after: float | None = Field(
        default=None,
        description="back up a shard running this many times the job's median shard time "
        "(None: the master's setting; 0: never; else at least 1)",
    )

    @field_validator("speculate_after")
    @classmethod
    def _sane_speculation(cls, v: float | None) -> float | None:
        if v is not None and v != 0 and not 1 <= v < float("inf"):
            raise ValueError("speculate_after: 0 (never) or a factor of at least 1, such as 2")
        return v

    # ---- datasets, sharding strategies and op options (see shardmill.data.plan) ----
    format: DatasetFormat | None = Field(default=None, description="None: from the path")
    strategy: Strategy = "rows"
    rows_per_shard: int | None = Field(default=None, ge=1)
    target_bytes: int | None = Field(default=None, ge=1, description="bytes per shard")
    columns: list[Column] | None = Field(default=None, description="the columns the op reads")
    column_groups: list[list[Column]] | None = Field(default=None, min_length=1)
    key: Column | None = Field(default=None, description="key column: hash, range, groupby")
    boundaries: list[float] | None = Field(default=None, description="range split points")
    sample_size: int = Field(default=10_000, ge=1, le=10_000_000)
    bins: int = Field(default=10, ge=1, le=1_000_000)
    value_range: tuple[float, float] | None = Field(default=None, description="histogram")
    nan_aware: bool = False
    output: str | None = Field(default=None, description="row_stats: the .npy to write")
    synthetic: SyntheticSpec | None = None
    header: bool = Field(default=True, description="CSV: the first line names the columns")
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    dtypes: dict[str, ColumnType] = Field(
        default_factory=dict, description="CSV column types (default: inferred from a sample)"
    )
    options: dict[str, JsonValue] = Field(default_factory=dict, description="for user ops")


class RowRange(Frozen):
    kind: Literal["rows"] = "rows"
    path: str
    start: int
    stop: int


class MapChunk(Frozen):
    kind: Literal["map"] = "map"
    function: FunctionRef
    count: int


class NpyPiece(Frozen):
    path: str
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class NpySource(Frozen):
    """Row ranges of one or more .npy files, read in this order (a directory's parts)."""

    kind: Literal["npy"] = "npy"
    pieces: list[NpyPiece]


class CsvSource(Frozen):
    """The lines of a CSV file that begin in bytes [start, stop), parsed with a fixed schema."""

    kind: Literal["csv"] = "csv"
    path: str
    start: int = Field(ge=0)
    stop: int = Field(ge=0)
    names: list[str]
    dtypes: list[ColumnType]
    delimiter: str = ","


class ParquetSource(Frozen):
    kind: Literal["parquet"] = "parquet"
    path: str
    row_groups: list[int]


class SyntheticSource(Frozen):
    kind: Literal["synthetic"] = "synthetic"
    spec: SyntheticSpec
    start: int = Field(ge=0)
    stop: int = Field(ge=0)


class ValueSource(Frozen):
    """The rows travel by value in the task's payload."""

    kind: Literal["value"] = "value"


Source = Annotated[
    NpySource | CsvSource | ParquetSource | SyntheticSource | ValueSource,
    Field(discriminator="kind"),
]


class Bucket(Frozen):
    """Keep only the rows whose key lands in bucket `index` of `count` (hash or range)."""

    how: Literal["hash", "range"]
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    boundaries: list[float] = []


class OpOptions(Frozen):
    """What an op needs besides the rows; `params` is the spec's `options`, for user ops."""

    nan_aware: bool = False
    bins: int = 10
    value_range: tuple[float, float] | None = None
    output: str | None = None
    params: dict[str, JsonValue] = {}


class ScanShard(Frozen):
    """One shard of a dataset op: where to read, which columns, which bucket, which options."""

    kind: Literal["scan"] = "scan"
    source: Source
    first_row: int = Field(default=0, description="global index of the source's first row")
    columns: list[int] | None = Field(default=None, description="value columns; None: all")
    key: int | None = None
    bucket: Bucket | None = None
    options: OpOptions = OpOptions()


Descriptor = Annotated[RowRange | MapChunk | ScanShard, Field(discriminator="kind")]


def job_spec(**fields: Any) -> JobSpec:
    """A JobSpec from keyword fields; JobSpecError names the first bad field and its value."""
    try:
        return JobSpec(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise JobSpecError(f"{field}: {err['msg']} (got {err.get('input')!r})") from None
