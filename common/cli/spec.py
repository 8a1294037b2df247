"""Job-spec flags shared by `shardmill submit` and `shardmill plan`, and the plan command."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from shardmill import exitcodes
from shardmill.data.paths import located

SIZES = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """Every JobSpec field a dataset job takes, as flags (see README, Datasets and operations)."""
    g = p.add_argument_group("dataset and sharding")
    g.add_argument("--format", choices=["npy", "npy_dir", "csv", "parquet", "synthetic"])
    g.add_argument("--synthetic", metavar="rows=N,cols=N,seed=N,keys=N", type=_synthetic)
    g.add_argument("--strategy", choices=["rows", "columns", "hash", "range"])
    g.add_argument("--rows-per-shard", type=int, metavar="N")
    g.add_argument("--target-bytes", type=_size, metavar="SIZE", help="e.g. 64M")
    g.add_argument("--columns", type=_columns, metavar="A,B,...", help="names or indices")
    g.add_argument("--column-groups", type=_groups, metavar="A,B;C,...")
    g.add_argument("--key", type=_column, metavar="COLUMN", help="name or index")
    g.add_argument("--boundaries", type=_floats, metavar="X,Y,...", help="range split points")
    g.add_argument("--sample-size", type=int, metavar="N", help="rows sampled for quantiles")
    g.add_argument("--no-header", dest="header", action="store_false", default=None)
    g.add_argument("--delimiter", metavar="C")
    g.add_argument("--dtype", dest="dtypes", action="append", type=_pair, metavar="NAME=TYPE")
    o = p.add_argument_group("op options")
    o.add_argument("--bins", type=int, help="histogram bins (default 10)")
    o.add_argument("--range", dest="value_range", type=_floats, metavar="LO,HI")
    o.add_argument("--nan-aware", action="store_true", default=None, help="skip NaNs")
    o.add_argument("--output", help="row_stats: the .npy to write")
    o.add_argument("--option", dest="options", action="append", type=_pair, metavar="KEY=VALUE")


def spec_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the user gave on the command line (absent flags keep the defaults)."""
    names = ["format", "synthetic", "strategy", "rows_per_shard", "target_bytes", "columns"]
    names += ["column_groups", "key", "boundaries", "sample_size", "header", "delimiter"]
    names += ["bins", "value_range", "nan_aware", "output"]
    fields = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.dtypes:
        fields["dtypes"] = dict(args.dtypes)
    if args.options:
        fields["options"] = {k: _json(v) for k, v in args.options}
    if "value_range" in fields:
        fields["value_range"] = tuple(fields["value_range"])
    return fields


def cmd_plan(args: argparse.Namespace) -> int:
    """A dry run: the shards a spec would make, with rows, bytes, key range and skew."""
    from shardmill.data.plan import build_plan
    from shardmill.ops.registry import Registry
    from shardmill.wire.spec import job_spec

    fields = spec_fields(args)
    if args.dataset is not None:
        fields["dataset"] = located(args.dataset)
    if fields.get("output"):
        fields["output"] = os.path.abspath(fields["output"])
    spec = job_spec(op=args.op, shards=args.shards, **fields)
    plan = build_plan(spec, dry_run=True, registry=Registry(args.imports or []))
    report = plan.report()
    if args.json:
        print(json.dumps(report))
    else:
        _show(report)
    return exitcodes.OK


def _show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table("shard", "rows", "bytes", "columns", "key from", "key to")
    for s in report["shards"]:
        low, high = s["key_low"], s["key_high"]
        table.add_row(
            str(s["index"]),
            f"{s['rows']:,}",
            f"{s['bytes']:,}",
            _short(s["columns"]),
            "-" if low is None else str(low),
            "-" if high is None else str(high),
        )
    console.print(table)
    about = " (estimated)" if report["estimated"] else ""
    console.print(
        f"{report['op']} over {report['dataset']} ({report['format']}), strategy "
        f"{report['strategy']}: {len(report['shards'])} shards, {report['rows']:,} rows{about}, "
        f"skew {report['skew']:.2f} (largest / mean shard)",
        markup=False,
        highlight=False,
    )


def _short(cols: list[int]) -> str:
    text = ",".join(map(str, cols))
    return text if len(text) <= 30 else text[:27] + "..."


# ---- flag parsers ---------------------------------------------------------------------------


def _column(text: str) -> int | str:
    return int(text) if text.isdigit() else text


def _columns(text: str) -> list[int | str]:
    return [_column(c.strip()) for c in text.split(",") if c.strip()]


def _groups(text: str) -> list[list[int | str]]:
    return [_columns(g) for g in text.split(";") if g.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of numbers"
        ) from None


def _size(text: str) -> int:
    t = text.strip().lower().removesuffix("b")
    scale = SIZES.get(t[-1:], 1)
    try:
        return int(float(t[:-1] if t[-1:] in SIZES else t) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size such as 65536, 64M or 1G"
        ) from None


def _synthetic(text: str) -> dict[str, int]:
    try:
        return {k: int(v) for k, v in map(_pair, text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not like rows=1000000,cols=4,seed=1"
        ) from None


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key.strip(), value.strip()


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string
