"""The dashboard in a real headless Chromium, over one real cluster for the module: a worker
killed mid-job, a job that fails with a traceback, a shard whose first attempt raises. Its
/metrics parsed with prometheus_client and matched against the jobs. On a failure, screenshots
of the jobs, job and cluster pages are attached to the test's output."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from browser import chrome, screenshots_on_failure
from faults import agent_pid, worker_of
from helpers import FAST, cluster_env, run_cli, wait_until
from prometheus_client.parser import text_string_to_metric_families
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

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


@pytest.fixture(scope="module")
def flaky_job(lab: tuple[LocalCluster, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    """A job whose one shard raises at its first attempt, then succeeds: an "error" bar."""
    cluster, _ = lab
    runs = str(tmp_path_factory.mktemp("flaky"))
    with cluster.client() as client:
        job = client.map("sm_tasks:flaky", [(runs, "f0", 4)], chunk_size=1, max_attempts=3)
        assert job.result(timeout=60) == [40]
    return job.id


@pytest.fixture(scope="module")
def jobs(killed_job: str, printed_job: str, flaky_job: str) -> list[str]:
    """The module's jobs, oldest first."""
    return [killed_job, printed_job, flaky_job]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module's pages."""
    driver = chrome()
    yield driver
    driver.quit()


@pytest.fixture
def shots(
    browser: Any,
    lab: tuple[LocalCluster, str],
    jobs: list[str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Callable[[], AbstractContextManager[None]]:
    """`with shots():` a failure inside attaches screenshots of the three pages."""
    _, base = lab
    pages = {"jobs": f"{base}/", "job": f"{base}/jobs/{jobs[1]}", "cluster": f"{base}/cluster"}
    return lambda: screenshots_on_failure(browser, pages, tmp_path, request.node)


def test_the_job_page_shows_progress_the_lost_worker_and_a_retry(
    lab: tuple[LocalCluster, str], killed_job: str, browser: Any, shots: Any
) -> None:
    cluster, base = lab
    with cluster.client() as client:
        info = client.status(killed_job, shards=True)
    lost = {a.worker for s in info.shards or [] for a in s.history if a.outcome == "lost"}
    retried = [s.index for s in info.shards or [] if len(s.history) > 1]
    assert lost and retried
    with shots():
        browser.get(f"{base}/jobs/{killed_job}")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "progress").text == "100 %")
        assert browser.find_element(By.ID, "state").text == "done"
        assert set(browser.find_element(By.ID, "lost-workers").text.split(", ")) == lost
        shown = browser.find_element(By.ID, "retried").text
        assert all(f"shard {s}" in shown for s in retried)
        # The header's "retrying N" counts the shards listed as retrying now: none, at the end
        assert browser.find_element(By.ID, "retrying").text == "0"
        assert browser.find_element(By.ID, "retrying-now").text == "none"
        assert browser.find_elements(By.CSS_SELECTOR, '#stream rect[data-outcome="lost"]')
        bars = browser.find_elements(By.CSS_SELECTOR, "#stream rect")
        assert len(bars) == sum(len(s.history) for s in info.shards or [])
        assert len(browser.find_elements(By.CSS_SELECTOR, "#shards tbody tr")) == 10
        # The lost worker's lanes say so; the time axis has round ticks, not just its ends
        labels = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#stream text.lane")]
        assert any(w in t and "(lost)" in t for t in labels for w in lost), labels
        ticks = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#stream text.tick")]
        assert len([t for t in ticks if t.endswith(" s")]) >= 3, ticks


def test_jobs_are_listed_newest_first_and_a_failed_job_is_red(
    lab: tuple[LocalCluster, str], jobs: list[str], browser: Any, shots: Any
) -> None:
    _, base = lab
    killed, printed, _ = jobs
    with shots():
        browser.get(f"{base}/")

        def table(d: Any) -> tuple[Any, ...]:
            rows = d.find_elements(By.CSS_SELECTOR, "#jobs tbody tr[data-job-id]")
            row = d.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{killed}"]')
            failed = d.find_element(By.CSS_SELECTOR, f'tr[data-job-id="{printed}"]')
            bar = failed.find_element(By.CSS_SELECTOR, ".bar .failed")
            return (
                [r.get_attribute("data-job-id") for r in rows],
                row.text,
                [_colour(row, ".state"), _colour(failed, ".state")],
                [bar.size["width"], _colour(failed, ".bar .failed"), _colour(failed, ".bar .done")],
            )

        ids, text, states, (width, *bar) = _read(browser, table)
        # Then the newest job is on top (none runs now), the first one at the bottom
        assert ids == jobs[::-1]
        assert "done" in text and "100 %" in text
        # And the failed job's state and progress bar are red, not a done job's green
        assert states == [GREEN, RED]
        assert width > 0 and bar == [RED, RED]


def test_an_attempt_that_raised_is_drawn_in_the_error_colour(
    lab: tuple[LocalCluster, str], flaky_job: str, browser: Any, shots: Any
) -> None:
    _, base = lab
    with shots():
        browser.get(f"{base}/jobs/{flaky_job}")
        wait = WebDriverWait(browser, 30)
        rects = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stream rect"))
        # Then the legend names "error" in a colour of its own, and the raised attempt has it
        key = {
            e.get_attribute("data-outcome"): _colour(e, ".swatch")
            for e in browser.find_elements(By.CSS_SELECTOR, "#key > span")
        }
        assert "error" in key and list(key.values()).count(key["error"]) == 1, key
        fills = {r.get_attribute("data-outcome"): _rgb(r.get_attribute("fill")) for r in rects}
        assert fills["error"] == key["error"] and fills["ok"] == key["ok"]
        assert "the task raised" in browser.find_element(By.ID, "key").text


def test_a_failed_job_shows_its_error_next_step_and_traceback(
    lab: tuple[LocalCluster, str], printed_job: str, browser: Any, shots: Any
) -> None:
    _, base = lab
    with shots():
        browser.get(f"{base}/jobs/{printed_job}")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "state").text == "failed")
        # Then the job's own error and next step head the page
        error = browser.find_element(By.ID, "job-error")
        assert error.is_displayed() and "ValueError: bad value 5" in error.text
        assert browser.find_element(By.ID, "next-step").text.startswith("next step: fix the")
        # And a shard's story shows what it printed, then its traceback
        story = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shards pre.output"))
        assert story[0].text == "computing shard input 5"
        tb = browser.find_element(By.CSS_SELECTOR, "#shards pre.traceback")
        assert tb.is_displayed() and tb.text.rstrip().endswith("ValueError: bad value 5")
        # When its bar is clicked, that attempt's traceback is shown whole
        browser.find_element(By.CSS_SELECTOR, "#stream rect").click()
        picked = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#picked pre.traceback"))
        assert picked.is_displayed() and "Traceback (most recent call last)" in picked.text


def test_an_unknown_job_shows_only_the_error(
    lab: tuple[LocalCluster, str], browser: Any, shots: Any
) -> None:
    _, base = lab
    with shots():
        browser.get(f"{base}/jobs/no-such-job")
        notice = WebDriverWait(browser, 30).until(
            lambda d: (n := d.find_element(By.ID, "notice")).is_displayed() and n
        )
        assert "No job no-such-job" in notice.text and "pruned" in notice.text
        assert not browser.find_element(By.ID, "job").is_displayed()


PER_WORKER = ("cpu", "memory", "heartbeat")
CHART_POINTS = """return Object.fromEntries(Object.entries(charts).map(([name, u]) =>
  [name, {labels: u.series.slice(1).map(s => s.label),
          points: u.data.slice(1).map(s => s.filter(v => v != null).length)}]))"""


def test_the_cluster_page_charts_the_running_cluster(
    lab: tuple[LocalCluster, str], killed_job: str, browser: Any, shots: Any
) -> None:
    cluster, base = lab
    with cluster.client() as client:
        alive = {w.worker_id for w in client.workers()}
        (victim,) = client.status(killed_job).lost_workers
    with shots():
        browser.get(f"{base}/cluster")

        seen: list[Any] = []

        def drawn() -> dict[str, Any] | None:
            charts = browser.execute_script(CHART_POINTS)
            seen[:] = [charts]
            if not charts or not alive <= set(charts["cpu"]["labels"]):
                return None
            # each series with two points or more; a per-worker chart's for each live worker
            points = [
                n
                for name, c in charts.items()
                for label, n in zip(c["labels"], c["points"], strict=True)
                if name not in PER_WORKER or label in alive
            ]
            return charts if min(points) >= 2 else None

        try:
            charts = WebDriverWait(browser, 30).until(lambda d: drawn())
        except TimeoutException:
            raise AssertionError(f"charts not drawn with points: {seen}") from None
        # Then every chart has points, one series per live worker in the per-worker ones
        assert set(charts) == {"rate", "slots", "queued", "cpu", "memory", "heartbeat"}
        assert alive <= set(charts["memory"]["labels"]) and charts["slots"]["labels"][0] == "busy"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#charts canvas")) >= 6
        # And the workers table has each live worker's pid, CPU and memory, and the lost one

        def rows(d: Any) -> tuple[Any, ...]:
            row = {
                w: d.find_element(By.CSS_SELECTOR, f'#workers tr[data-worker-id="{w}"]')
                for w in [*alive, victim]
            }
            texts = {w: r.text for w, r in row.items()}
            return texts, row[victim].get_attribute("data-state")

        texts, lost_state = _read(browser, rows)
        for worker in alive:
            text = texts[worker]
            assert " MiB" in text and " %" in text and worker.split("-")[1] in text, text
        assert lost_state == "lost" and killed_job in texts[victim], texts[victim]


def test_the_api_docs_render_from_packaged_files(
    lab: tuple[LocalCluster, str], browser: Any, shots: Any
) -> None:
    _, base = lab
    with shots():
        browser.get(f"{base}/docs")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, ".swagger-ui .opblock-summary-path")
        )
        paths = [
            e.get_attribute("data-path")
            for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
        ]
        assert "/api/jobs" in paths and "/api/cluster" in paths
        # Every script and style it loaded came from the dashboard itself: no CDN
        loaded = browser.execute_script(
            "return performance.getEntriesByType('resource').map(r => r.name)"
        )
        assert loaded and all(u.startswith(base) for u in loaded), loaded


GREEN, RED = (46, 125, 50), (214, 39, 40)


def _rgb(css: str) -> tuple[int, ...]:
    """'rgb(1, 2, 3)', 'rgba(1, 2, 3, 1)' or '#010203' as (1, 2, 3)."""
    if css.startswith("#"):
        return tuple(int(css[i : i + 2], 16) for i in (1, 3, 5))
    return tuple(int(float(v)) for v in css[css.index("(") + 1 : -1].split(",")[:3])


def _read(browser: Any, read: Callable[[Any], tuple[Any, ...]]) -> tuple[Any, ...]:
    """What `read` gathers from the page, once it runs through with no element missing or gone
    stale (the page redraws its tables each time it polls)."""
    retry = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(browser, 30, ignored_exceptions=retry).until(read)  # type: ignore[no-any-return]


def _colour(element: Any, css: str) -> tuple[int, ...]:
    found = element.find_element(By.CSS_SELECTOR, css)
    return _rgb(found.value_of_css_property("background-color"))


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
    # and `status JOB` names it after the job's timing (no --json needed)
    status = run_cli("status", killed_job, master=cluster).stdout
    lost = [line for line in status.splitlines() if line.startswith("lost workers  ")]
    assert lost and lost[0].endswith(f" {victim} (their shards ran again elsewhere)"), status
    assert "\nfailed attempts  " in status
    assert "\ndone  " in status and "\nstarted  " in status and "\nsubmitted  " in status
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
