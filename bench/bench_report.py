"""Targets, the machine description, the rich table and the JSON file."""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import zmq
from bench_harness import POOL, REPO_DIR, SHARDMILL, Metric
from bench_runtime import runtime_source
from rich.console import Console
from rich.table import Table

import shardmill
import shardmill.master
import shardmill.ops
import shardmill.worker

FORMATS = {"tasks/s": "{:,.0f}", "ms": "{:.3f}", "s": "{:.3f}", "GB/s": "{:.2f}", "MiB": "{:,.0f}"}
RUNTIME_DIRS = ("common", "master", "worker")


def evaluate(metrics: list[Metric]) -> None:
    """Set `passed` on every metric with a target it can be judged against."""
    by_key = {m.key: m for m in metrics}
    for m in metrics:
        t, value = m.target, m.values.get(SHARDMILL)
        if t is None or not isinstance(value, float) or math.isnan(value):
            continue
        scale = 1.0
        if t.relative_to:
            base = by_key.get(t.relative_to) if t.relative_to != "pool" else m
            ref = None if base is None else base.values.get(POOL if base is m else SHARDMILL)
            if not isinstance(ref, float):
                m.note = m.note or f"target needs {t.relative_to} in the same run"
                continue
            scale = ref
        bound = t.value * scale
        m.passed = value >= bound if t.op == ">=" else value <= bound


def fmt(value: float | str | None, unit: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if math.isnan(value):
        return "-"
    return FORMATS.get(unit, "{:.3f}").format(value)


def ratio(m: Metric) -> str:
    a, b = m.values.get(SHARDMILL), m.values.get(POOL)
    if isinstance(a, float) and isinstance(b, float) and b and not math.isnan(a / b):
        return f"{a / b:.2f}x"
    return ""


def render(metrics: list[Metric], systems: list[str], console: Console) -> None:
    table = Table(title="shardmill vs multiprocessing.Pool(2): medians", title_justify="left")
    table.add_column("metric")
    table.add_column("unit")
    for name in systems:
        table.add_column(name, justify="right")
    table.add_column(f"{SHARDMILL} / {POOL}", justify="right")
    table.add_column("target")
    table.add_column("met")
    for m in metrics:
        arrow = "↑" if m.higher_is_better else "↓"
        verdict = {True: "[green]yes[/]", False: "[red]NO[/]", None: ""}[m.passed]
        target = m.target.text() if m.target else ""
        cells = [fmt(m.values.get(name), m.unit) for name in systems]
        table.add_row(m.label, f"{m.unit} {arrow}", *cells, ratio(m), target, verdict)
    console.print(table)


def machine() -> dict[str, Any]:
    """What the numbers were measured on, and which runtime source they measured."""
    return {
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "ram_gib": round(int(_proc_field("/proc/meminfo", "MemTotal").split()[0]) / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": version("numpy"),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": version("msgpack"),
        "pydantic": version("pydantic"),
        "mp_start_method": multiprocessing.get_start_method(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "git_head": _git("rev-parse", "--short", "HEAD"),
        "runtime": runtime_source(),
        "runtime_dirty": bool(_git("status", "--porcelain", "--", *RUNTIME_DIRS)),
        "runtime_sha256": runtime_digest(),
    }


def _proc_field(path: str, name: str) -> str:
    for line in Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return "?"


def _git(*args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "?"


def runtime_digest() -> str:
    """A digest of the imported runtime's source: others edit it while benchmarks run."""
    digest = hashlib.sha256()
    for package in (shardmill, shardmill.ops, shardmill.master, shardmill.worker):
        for path in sorted(Path(str(package.__file__)).parent.glob("*.py")):
            digest.update(f"{package.__name__}/{path.name}".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def write_json(path: Path, report: dict[str, Any], metrics: list[Metric]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {**report, "metrics": [asdict(m) for m in metrics]}
    path.write_text(json.dumps(body, indent=2, default=_nan_safe) + "\n")


def _nan_safe(o: object) -> object:
    return str(o)
