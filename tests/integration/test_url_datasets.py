"""Datasets by URL from a real nginx: each worker fetches only its own shard's bytes.

nginx (Debian's package) serves a temp dir on a loopback port with range requests on, and a
`/norange/` location with them off; its access log records who fetched which range. A small
server of our own cuts bodies short, as a dropped connection would.
"""

from __future__ import annotations

import http.server
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import cluster_env, wait_until
from sysprog import ensure

from shardmill import JobFailed, JobSpecError, LocalCluster

ROWS, COLS = 10_000_000, 10
LOG_FORMAT = '$status "$http_range" $body_bytes_sent "$http_user_agent" $request_uri'


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, Path]]:
    """(base URL, web root, access log) of an nginx started for this module."""
    (binary,) = ensure(["nginx"], ["nginx"])
    root = tmp_path_factory.mktemp("nginx")
    www, log = root / "www", root / "access.log"
    (www / "norange").mkdir(parents=True)
    port = _port()
    conf = root / "nginx.conf"
    temp = " ".join(
        f"{k}_temp_path {root};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would run as www-data, who cannot read pytest's private temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"{user}daemon off; pid {root}/nginx.pid; error_log {root}/error.log;\n"
        "events {}\n"
        f"http {{ {temp} log_format ranges '{LOG_FORMAT}'; access_log {log} ranges;\n"
        f"  server {{ listen 127.0.0.1:{port}; root {www};\n"
        "    location /norange/ { max_ranges 0; } } }\n"
    )
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(root)])
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, what="nginx to listen")
        yield base, www, log
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def url_cluster() -> Iterator[LocalCluster]:
    # expiry after 2 s of silence, not FAST's 0.5 s: a re-run on a loaded machine would fetch
    # a shard's bytes twice, and the test counts each byte
    with LocalCluster(
        workers=2, env=cluster_env(), heartbeat_interval=0.05, heartbeat_liveness=40
    ) as c:
        yield c


def _fetches(log: Path, name: str) -> list[tuple[str, int, int]]:
    """(fetcher, first byte, last byte) of every ranged GET of `name`."""
    out = []
    for line in log.read_text().splitlines():
        m = re.match(r'(\d+) "bytes=(\d+)-(\d+)" (\d+) "shardmill/\S+ \((.+)\)" (\S+)', line)
        if m and m.group(6) == f"/{name}":
            assert m.group(1) == "206", line
            out.append((m.group(5), int(m.group(2)), int(m.group(3))))
    return out


def test_column_stats_over_a_url_reads_only_each_shards_bytes(
    nginx: tuple[str, Path, Path], url_cluster: LocalCluster
) -> None:
    base, www, log = nginx
    x = np.random.default_rng(7).random((ROWS, COLS), dtype=np.float32)
    np.save(www / "big.npy", x)
    with url_cluster.client() as client:
        job = client.submit("column_stats", f"{base}/big.npy", shards=4)
        stats = job.result(timeout=120)
        shards = job.status(shards=True).shards or []
    assert stats["count"] == ROWS and stats["shards_merged"] == 4
    for name in ("min", "max"):
        np.testing.assert_array_equal(stats[name], getattr(np, name)(x, axis=0))
    for name in ("mean", "sum"):  # shardmill sums in float64: so does the reference
        want = getattr(np, name)(x, axis=0, dtype=np.float64)
        np.testing.assert_allclose(stats[name], want, rtol=1e-9)
    # Who fetched what: the master only the header and a one-byte probe; each worker exactly
    # the bytes of the rows of the shards it ran, each byte once, and nothing else.
    fetched = _fetches(log, "big.npy")
    master = [(a, b) for who, a, b in fetched if who == "master"]
    assert master and all(b - a < 1 << 16 for a, b in master)
    offset = (www / "big.npy").stat().st_size - x.nbytes
    row = COLS * x.itemsize
    per_worker: dict[str, list[tuple[int, int]]] = {}
    for who, a, b in fetched:
        if who == "master":
            continue
        if a < offset:  # a worker reads the header once, and only the header
            assert a == 0 and b < 1 << 16
            continue
        per_worker.setdefault(who, []).append((a, b + 1))
    ran = {s.index: next(a.worker for a in s.history if a.outcome == "ok") for s in shards}
    assert set(per_worker) <= set(ran.values())
    for worker, ranges in per_worker.items():
        mine = sorted(
            (offset + r0 * row, offset + r1 * row)
            for index, who in ran.items()
            if who == worker
            for r0, r1 in [(index * ROWS // 4, (index + 1) * ROWS // 4)]
        )
        got = sorted(ranges)
        assert sum(b - a for a, b in got) == sum(b - a for a, b in mine), worker
        assert got[0][0] == mine[0][0] and got[-1][1] == mine[-1][1]
        assert all(p[1] <= q[0] for p, q in itertools.pairwise(got)), "overlap"


def test_a_404_and_a_server_without_ranges_are_refused_at_submit(
    nginx: tuple[str, Path, Path], url_cluster: LocalCluster
) -> None:
    base, www, _ = nginx
    np.save(www / "norange" / "small.npy", np.ones((1000, 3)))
    (www / "norange" / "small.csv").write_text("a,b\n" + "1,2\n" * 1000)
    with url_cluster.client() as client:
        with pytest.raises(JobSpecError, match=r"not found \(HTTP 404\)"):
            client.submit("column_stats", f"{base}/missing.npy")
        for name in ("small.npy", "small.csv"):
            with pytest.raises(JobSpecError, match="does not answer range requests"):
                client.submit("column_stats", f"{base}/norange/{name}")
        # Local files are paths under the data roots, never URLs around them.
        for url in ("file:///etc/passwd", "simplecache::file:///etc/hosts", "ftp://h/x.npy"):
            with pytest.raises(JobSpecError, match=r"only .* URLs are read"):
                client.submit("column_stats", url, format="csv")
        assert client.jobs() == [] or all(j.state == "done" for j in client.jobs())


class _Cutting(http.server.BaseHTTPRequestHandler):
    """Serves one .npy: small ranges (the header, the probe) whole, big ones cut in half."""

    body = b""

    def _range(self) -> tuple[int, int]:
        m = re.match(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        return (int(m.group(1)), int(m.group(2)) + 1) if m else (0, len(self.body))

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def do_GET(self) -> None:
        a, b = self._range()
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {a}-{b - 1}/{len(self.body)}")
        self.send_header("Content-Length", str(b - a))
        self.end_headers()
        cut = b if b - a <= 1 << 16 else a + (b - a) // 2
        self.wfile.write(self.body[a:cut])
        self.close_connection = True  # and the rest never comes

    def log_message(self, *args: object) -> None:
        pass


def test_a_body_cut_short_is_retried_and_then_named(
    url_cluster: LocalCluster, tmp_path: Path
) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, np.ones((200_000, 4)))
    _Cutting.body = path.read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Cutting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cut.npy"
    try:
        with url_cluster.client() as client:
            job = client.submit("column_stats", url, shards=1, max_attempts=2)
            with pytest.raises(JobFailed) as info:
                job.result(timeout=60)
            (shard,) = job.status(shards=True).shards or []
    finally:
        server.shutdown()
        server.server_close()
    # Never parsed as data: each attempt failed on the short body, and it was tried again.
    assert [a.outcome for a in shard.history] == ["bad_input", "bad_input"]
    assert "cut short" in str(info.value) or "transfer failed" in str(info.value)


def test_column_stats_over_a_csv_url(
    nginx: tuple[str, Path, Path], url_cluster: LocalCluster
) -> None:
    base, www, log = nginx
    x = np.random.default_rng(11).normal(size=(200_000, 4))
    path = www / "table.csv"
    with open(path, "w") as f:
        f.write("a,b,c,d\n")
        np.savetxt(f, x, delimiter=",", fmt="%.17g")
    with url_cluster.client() as client:
        stats = client.submit("column_stats", f"{base}/table.csv", shards=4).result(timeout=120)
    assert stats["count"] == 200_000
    np.testing.assert_allclose(stats["mean"], x.mean(axis=0), rtol=1e-9)
    np.testing.assert_array_equal(stats["max"], x.max(axis=0))
    # The workers read their shards' lines and no more: each byte of the data about once
    # (plus at most a line-finding block per shard edge), never the whole file each.
    fetched = _fetches(log, "table.csv")
    workers = [(a, b) for who, a, b in fetched if who != "master"]
    assert {who for who, _, _ in fetched} - {"master"}  # the workers fetched by range
    size = path.stat().st_size
    assert sum(b - a + 1 for a, b in workers) <= size + 4 * 2 * (1 << 16)
    assert all(b - a + 1 < size / 2 for a, b in workers)
