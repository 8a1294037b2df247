"""Fixtures for tests against real containers: the image, and one Compose project per module."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from dockerenv import (
    BUILD_LOG,
    IMAGE,
    BuildFailed,
    Compose,
    compose_env,
    docker_daemon_error,
    run_script,
    running,
    stale_files,
)
from helpers import free_ports, wait_until


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The image, built from the working tree, and the Compose plugin, both by docker/ scripts."""
    why = docker_daemon_error()
    if why is not None:
        pytest.skip(f"no Docker daemon: `docker info` failed ({why})")
    stale: list[str] = []
    BUILD_LOG.unlink(missing_ok=True)  # this session's build output only
    try:
        run_script("install-compose.sh", timeout=300)
        for _ in range(2):  # a second build only if the tree changed while the first ran
            run_script("build-image.sh", timeout=600)
            stale = stale_files()
            if not stale:
                return IMAGE
    except BuildFailed as e:
        pytest.fail(str(e))
    pytest.fail(f"{IMAGE} does not hold the working tree's code; files that differ: {stale}")


@pytest.fixture(scope="module")
def project(docker_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    """A master and 3 workers (2 slots each) in a project of their own; `down -v` after."""
    worker_port, client_port, dashboard_port = free_ports(3)
    name = f"smtest-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    env = compose_env(worker_port, client_port, dashboard_port)
    c = Compose(name, env, client_port, tmp_path_factory.mktemp("compose") / "keys")
    with running(c, "--scale", "worker=3"):
        yield c


@pytest.fixture
def compose(project: Compose) -> Compose:
    """The module's project, settled for the next test: bringing a project up costs ~13 s,
    so the tests share one and each leaves it whole again (a killed worker container is
    restarted by its policy, extra workers are scaled away, a cut network is reconnected by
    its test): 3 workers registered and idle, no job left."""
    project("up", "-d", "--no-deps", "--no-recreate", "--scale", "worker=3", "worker")
    with project.client() as client:
        for job in client.jobs():
            if job.state == "running":
                client.cancel(job.job_id)

        def settled() -> bool:
            workers = client.workers()
            return len(workers) == 3 and all(w.busy == 0 for w in workers)

        wait_until(settled, timeout=60, what="3 idle workers")
        client.prune(0)
    return project
