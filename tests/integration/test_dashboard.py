"""The dashboard in a real headless Chromium, over a real cluster with a worker killed mid-job;
its /metrics parsed with prometheus_client and matched against the job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chrome
from faults import agent_pid, worker_of
from helpers import FAST, cluster_env, run_cli, wait_until
from prometheus_client.parser import text_string_to_metric_families

from shardmill import LocalCluster
from shardmill.errors import JobFailed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    """A cluster (ours: a worker dies in it) and a dashboard process on a loopback port."""
    logs = tmp_path_factory.mktemp("logs")
    json_logs = ["--log-format", "json"]
    with LocalCluster(
        workers=2,
        imports=["sm_tasks"],
        env=cluster_env(),
        log_dir=logs,
        log_level="INFO",
        master_args=[*json_logs, "--metrics-port", "0"],
        worker_args=json_logs,
        **FAST,
    ) as c:
        port = _free_port()
        env = {**cluster_env(), **c.client_env(), "SHARDMILL_DASHBOARD_TOKEN": "s3cret"}
        cmd = [sys.executable, "-m", "shardmill", "dashboard", "--port", str(port)]
        proc = subprocess.Popen(cmd, env=env)
        base = f"http://127.0.0.1:{port}"
        try:

            def up() -> bool:
                try:
                    return http(f"{base}/api/workers")[0] == 200
                except OSError:
                    return False

            wait_until(up, what="the dashboard to serve")
            yield c, base
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def killed_job(lab: tuple[LocalCluster, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job whose worker is SIGKILLed while it runs a shard: a lost worker, a retried shard."""
    cluster, _ = lab
    runs = str(tmp_path_factory.mktemp("runs"))
    with cluster.client() as client:
        job = client.map(
            "sm_tasks:slow", [(runs, f"k{i}", i, 0.2) for i in range(10)], chunk_size=1
        )
        victim = worker_of(client, job)
        os.kill(agent_pid(client, victim), signal.SIGKILL)
        assert job.result(timeout=60) == [i * 3 for i in range(10)]
    cluster.add_worker()  # the module's later tests see two workers again
    return job.id


@pytest.fixture(scope="module")
def printed_job(lab: tuple[LocalCluster, str]) -> str:
    """A job whose one shard prints a line, then raises."""
    cluster, _ = lab
    with cluster.client() as client:
        job = client.map("sm_tasks:print_then_raise", [(5,)], chunk_size=1, max_attempts=1)
        with pytest.raises(JobFailed):
            job.result(timeout=60)
    return job.id


def test_the_job_page_shows_progress_the_lost_worker_and_a_retry(
    lab: tuple[LocalCluster, str], killed_job: str, printed_job: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    cluster, base = lab
    with cluster.client() as client:
        info = client.status(killed_job, shards=True)
    lost = {a.worker for s in info.shards or [] for a in s.history if a.outcome == "lost"}
    retried = [s.index for s in info.shards or [] if len(s.history) > 1]
    assert lost and retried
    driver = chrome()
    try:
        driver.get(f"{base}/")
        WebDriverWait(driver, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-job-id="{killed_job}"]')
        )
        row = driver.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{killed_job}"]')
        assert "done" in row.text and "100 %" in row.text
        driver.save_screenshot(str(tmp_path / "jobs.png"))

        driver.get(f"{base}/jobs/{killed_job}")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: d.find_element(By.ID, "progress").text == "100 %")
        assert driver.find_element(By.ID, "state").text == "done"
        assert set(driver.find_element(By.ID, "lost-workers").text.split(", ")) == lost
        shown = driver.find_element(By.ID, "retried").text
        assert all(f"shard {s}" in shown for s in retried)
        assert driver.find_elements(By.CSS_SELECTOR, '#stream rect[data-outcome="lost"]')
        bars = driver.find_elements(By.CSS_SELECTOR, "#stream rect")
        assert len(bars) == sum(len(s.history) for s in info.shards or [])
        assert len(driver.find_elements(By.CSS_SELECTOR, "#shards tbody tr")) == 10
        driver.save_screenshot(str(tmp_path / "job.png"))

        # And a failed shard's story shows what it printed, then its traceback
        driver.get(f"{base}/jobs/{printed_job}")
        wait.until(lambda d: d.find_element(By.ID, "state").text == "failed")
        story = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shards pre.output"))
        assert story[0].text == "computing shard input 5"
        traceback = driver.find_element(By.CSS_SELECTOR, "#shards pre.traceback").text
        assert traceback.rstrip().endswith("ValueError: bad value 5")
    finally:
        driver.quit()
    assert (tmp_path / "job.png").stat().st_size > 0


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def test_metrics_parse_and_count_the_job(lab: tuple[LocalCluster, str], killed_job: str) -> None:
    cluster, base = lab
    status, text = http(f"{base}/metrics")
    assert status == 200
    samples = _samples(text)
    with cluster.client() as client:
        jobs = client.jobs()
    assert samples["shardmill_shards_done_total"][0].value == sum(j.shards_done for j in jobs)
    assert samples["shardmill_shards_requeued_total"][0].value >= 1
    assert samples["shardmill_shard_duration_seconds_count"][0].value >= 10
    by_state = {s.labels["state"]: s.value for s in samples["shardmill_jobs"]}
    assert by_state["done"] == sum(j.state == "done" for j in jobs)  # printed_job failed
    assert samples["shardmill_workers"][0].value >= 1
    assert 0 < samples["shardmill_worker_rtt_max_seconds"][0].value < 1  # pinged, echoed
    # Bounded labels: nothing is labelled by job, shard or worker.
    assert all(set(s.labels) <= {"state", "kind", "le"} for v in samples.values() for s in v)
    # The master's own --metrics-port serves the same counters (its gauges as of the last beat).
    assert cluster.metrics_url is not None and cluster.metrics_url.startswith("http://127.0.0.1:")
    status, direct = http(cluster.metrics_url)
    assert status == 200
    for name in ("shardmill_shards_done_total", "shardmill_shards_requeued_total"):
        assert _samples(direct)[name][0].value == samples[name][0].value


def test_the_api_is_read_only_without_the_token_and_documented(
    lab: tuple[LocalCluster, str], killed_job: str
) -> None:
    _, base = lab
    assert http(f"{base}/api/jobs/{killed_job}/cancel", "POST")[0] == 401
    code, body = http(
        f"{base}/api/jobs/{killed_job}/cancel", "POST", {"Authorization": "Bearer s3cret"}
    )
    assert code == 200 and json.loads(body)["state"] == "done"  # cancelling a done job: no-op
    assert http(f"{base}/api/jobs/no-such-job")[0] == 404
    # A page served elsewhere cannot read it by DNS rebinding: the Host must be this machine.
    assert http(f"{base}/api/jobs", headers={"Host": "evil.example"})[0] == 400
    assert (
        http(f"{base}/api/jobs", headers={"Host": f"localhost:{base.rsplit(':', 1)[1]}"})[0] == 200
    )
    paths = json.loads(http(f"{base}/openapi.json")[1])["paths"]
    assert {"/api/jobs", "/api/workers", "/api/jobs/{job_id}", "/metrics"} <= set(paths)


def test_watch_and_the_master_log_tell_the_lost_worker_and_the_retry(
    lab: tuple[LocalCluster, str], killed_job: str
) -> None:
    cluster, _ = lab
    with cluster.client() as client:
        info = client.status(killed_job)
    (victim,) = info.lost_workers
    assert info.attempts_failed >= 1 and info.shards_retrying == 0
    proc = run_cli("watch", killed_job, master=cluster)
    assert proc.returncode == 0, proc.stderr
    assert f"worker {victim} lost: its shards run again elsewhere" in proc.stdout
    assert "failed attempt: shard " in proc.stdout and f"on {victim}: lost" in proc.stdout
    # Every role logs JSON lines when told (--log-format json); the master logs each job's end.
    assert cluster.log_dir is not None
    records = [
        json.loads(line)
        for name in ("master.log", "worker-0.log")
        for line in (cluster.log_dir / name).read_text().splitlines()
    ]
    assert {"time", "level", "role", "pid", "logger", "message"} <= set(records[0])
    ends = [r["message"] for r in records if r["message"].startswith(f"job {killed_job} done")]
    assert len(ends) == 1 and "10/10 shards done" in ends[0] and victim in ends[0]
