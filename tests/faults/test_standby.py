"""A standby master with a real etcd: it takes over from a primary killed or paused, and the
job ends exact with no shard merged twice; a primary whose standby is gone goes on alone, and
the dashboard's cluster page (in a real headless Chromium) says so."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from browser import chrome
from faults import assert_merged_once
from helpers import cluster_env, free_ports, run_cli, runs, wait_until
from selenium.webdriver.common.by import By
from standby import Etcd, Master, Pair

from shardmill import Client, exitcodes

SHARDS = 40
EXPECTED = [i + 1 for i in range(SHARDS)]


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    etcd = Etcd(tmp_path / "etcd")
    pair = Pair(tmp_path, etcd=etcd.url)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        first = pair.start(pair.masters[0])
        pair.primary()
        pair.start(pair.masters[1])
        wait_until(lambda: pair.masters[1].event("standby"), what="the standby to wait")
        for _ in range(2):
            workers.append(pair.worker(1))
        with _client(pair) as c:
            wait_until(lambda: len(c.workers()) == 2, what="two workers")
        assert first.alive()
        yield pair
    finally:
        for w in workers:
            w.kill()
            w.wait()
        pair.stop()
        etcd.stop()


def _client(pair: Pair) -> Client:
    return Client(pair.clients_address(), insecure=True, connect_timeout=2)


def _in_sync(pair: Pair, primary: Master) -> None:
    with _client(pair) as c:
        wait_until(lambda: c.ping().standby.startswith("in sync"), what="the standby in sync")


def _submit(pair: Pair, runs_dir: str) -> str:
    with _client(pair) as c:
        args = [(runs_dir, f"k{i}", i, 0.05) for i in range(SHARDS)]
        job = c.map("sm_tasks:counted", args, chunk_size=1)
        wait_until(lambda: c.status(job.id).shards_done >= 8, what="8 merged shards")
        return job.id


def _finish(pair: Pair, job_id: str, runs_dir: str) -> None:
    with _client(pair) as c:
        job = c.job(job_id)
        assert job.result(timeout=60) == EXPECTED
        assert_merged_once(job)
    total = sum(runs(runs_dir, f"k{i}") for i in range(SHARDS))
    assert SHARDS <= total <= SHARDS + 4, total  # re-runs: at most the shards in flight


def test_the_standby_serves_within_5_s_of_a_kill(pair: Pair, runs_dir: str) -> None:
    # Given a job running on the primary, its standby in sync
    old = pair.primary()
    new = pair.standby_of(old)
    _in_sync(pair, old)
    job_id = _submit(pair, runs_dir)
    # When the primary is killed mid-job
    killed_at = pair.signal(old, signal.SIGKILL)
    # Then the standby dispatches within 5 s of the kill
    first = wait_until(lambda: new.event("first_dispatch"), timeout=15, what="a dispatch")
    assert first["wall"] - killed_at < 5.0, first["wall"] - killed_at
    # And the job ends exact, no shard merged twice
    _finish(pair, job_id, runs_dir)
    # And the killed master's state dir, started without its pair, is refused in one line
    cmd = [sys.executable, "-m", "shardmill.master", "--insecure", "--state-dir"]
    cmd += [str(old.state_dir), *("--port", "0", "--client-port", "0")]
    refused = subprocess.run(cmd, env=cluster_env(), capture_output=True, text=True, timeout=60)
    assert refused.returncode == exitcodes.CONFIG, refused.stderr
    assert "--peer" in refused.stderr and "--alone" in refused.stderr, refused.stderr
    # And with --alone (the other one stopped for good) it serves that state on its own
    with subprocess.Popen([*cmd, "--alone"], env=cluster_env(), stdout=subprocess.PIPE) as lone:
        assert lone.stdout is not None and b'"listening"' in lone.stdout.readline()
        lone.terminate()


def test_a_paused_primary_steps_down_when_it_wakes(pair: Pair, runs_dir: str) -> None:
    # Given a job running on the primary, its standby in sync
    old = pair.primary()
    new = pair.standby_of(old)
    _in_sync(pair, old)
    job_id = _submit(pair, runs_dir)
    # When the primary is paused past its lease, and the standby takes over
    pair.signal(old, signal.SIGSTOP)
    wait_until(lambda: new.event("listening"), timeout=15, what="the standby to take over")
    # And the old primary wakes up
    pair.signal(old, signal.SIGCONT)
    # Then it steps down, without serving again
    wait_until(lambda: old.event("stepped_down"), timeout=15, what="the old primary to stop")
    assert old.proc is not None and old.proc.wait(timeout=10) == 13
    # And the job ends exact, no shard merged twice
    _finish(pair, job_id, runs_dir)


def test_a_primary_whose_standby_is_gone_goes_on_alone(pair: Pair, runs_dir: str) -> None:
    # Given a primary with its standby in sync, and the dashboard's cluster page showing it
    primary = pair.primary()
    standby = pair.standby_of(primary)
    _in_sync(pair, primary)
    with _dashboard(pair) as base:
        browser = chrome()
        try:
            browser.get(f"{base}/cluster")
            shown = _standby_shown(browser, "in-sync")
            assert shown == f"standby in sync: {standby.name}", shown
            # When the standby is killed
            pair.signal(standby, signal.SIGKILL)
            # Then the primary says it is alone, in status and metrics, once a commit finds
            # it gone, and the page says so in red, with what to do
            with _client(pair) as c:
                job = c.map("sm_tasks:counted", [(runs_dir, f"k{i}", i) for i in range(5)])
                assert job.result(timeout=30) == [i + 1 for i in range(5)]
                assert c.ping().standby.startswith("alone")
                assert "shardmill_standby_in_sync 0.0" in c.metrics()
            shown = _standby_shown(browser, "alone")
            assert shown.startswith("standby alone: ") and "start the standby again" in shown
        finally:
            browser.quit()


@contextmanager
def _dashboard(pair: Pair) -> Iterator[str]:
    """`shardmill dashboard` given both masters' addresses; its URL."""
    (port,) = free_ports(1)
    cmd = [sys.executable, "-m", "shardmill", "dashboard", "--insecure", "--port", str(port)]
    proc = subprocess.Popen([*cmd, "--master", pair.clients_address()], env=cluster_env())
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/api/workers"), what="the dashboard to serve")
        yield base
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _standby_shown(browser: Any, state: str) -> str:
    """The cluster page's standby line once it shows `state` (it refreshes every second)."""

    def shown() -> str:
        el = browser.find_element(By.ID, "standby")
        return str(el.text) if el.get_attribute("data-state") == state else ""

    return " ".join(wait_until(shown, timeout=20, what=f"the page to show {state}").split())


def test_without_an_arbiter_the_standby_waits_for_promote(tmp_path: Path, runs_dir: str) -> None:
    # Given a primary and a standby with no arbiter, a job running
    pair = Pair(tmp_path, etcd=None)
    workers: list[subprocess.Popen[bytes]] = []
    try:
        old = pair.start(pair.masters[0])
        pair.primary()
        new = pair.start(pair.masters[1], "--standby")
        wait_until(lambda: new.event("standby"), what="the standby to wait")
        workers = [pair.worker(1) for _ in range(2)]
        _in_sync(pair, old)
        job_id = _submit(pair, runs_dir)
        # When the primary dies, the standby does not take over by itself
        pair.signal(old, signal.SIGKILL)
        assert old.proc is not None and old.proc.wait(timeout=10) == -signal.SIGKILL
        assert not new.event("listening")
        # Until `shardmill promote` asks it to
        proc = run_cli("promote", str(new.state_dir))
        assert proc.returncode == 0, proc.stderr
        wait_until(lambda: new.event("first_dispatch"), timeout=15, what="the promoted standby")
        _finish(pair, job_id, runs_dir)
    finally:
        for w in workers:
            w.kill()
            w.wait()
        pair.stop()
