"""Commands that picture jobs: `report` (self-contained HTML), `trace` (Chrome trace JSON), and
`dashboard` (a live web page)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shardmill import exitcodes
from shardmill.cli.jobs import connect

if TYPE_CHECKING:  # imported by the commands that use them: every CLI start pays for imports
    from shardmill.observe.timeline import Timeline


def _timeline(args: argparse.Namespace) -> Timeline:
    from shardmill.observe.timeline import Timeline

    with connect(args) as client:
        return Timeline.of(client.status(args.job, shards=True))


def _write(args: argparse.Namespace, text: str, what: str) -> int:
    if args.output == "-":
        sys.stdout.write(text)
        return exitcodes.OK
    path = Path(args.output or f"{args.job}-{args.output_default}")
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"shardmill: cannot write {what} to {path}: {e.strerror}", file=sys.stderr)
        return exitcodes.ERROR
    print(f"wrote {what} of job {args.job} to {path}", file=sys.stderr)
    return exitcodes.OK


def cmd_report(args: argparse.Namespace) -> int:
    from shardmill.observe.report import render_report

    return _write(args, render_report(_timeline(args)), "the report")


def cmd_trace(args: argparse.Namespace) -> int:
    from shardmill.observe.trace import chrome_trace

    return _write(args, json.dumps(chrome_trace(_timeline(args))), "the trace")


def cmd_dashboard(args: argparse.Namespace) -> int:
    import uvicorn  # the web stack loads only for the dashboard

    from shardmill.observe.dashboard import create_app

    connect(args).close()  # a bad address or key dir: one clear line now (the master may be down)
    token = args.token or os.environ.get("SHARDMILL_DASHBOARD_TOKEN") or None
    app = create_app(lambda: connect(args), token=token, allowed_hosts=args.allowed_hosts or [])
    where = f"http://{args.host}:{args.port}"
    print(
        f"dashboard on {where} ({'cancel needs the token' if token else 'read-only'})", flush=True
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return exitcodes.OK
