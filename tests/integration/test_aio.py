"""shardmill.aio.AsyncClient under a running event loop, against real master and workers."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shardmill import LocalCluster
from shardmill.aio import AsyncClient
from shardmill.errors import RemoteError


def _client(cluster: LocalCluster) -> AsyncClient:
    return AsyncClient(cluster.client_address, keys=cluster.keys_dir)


def test_calls_and_results_as_coroutines(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with _client(cluster) as client:
            assert (await client.ping()).workers == 2
            assert await client.call("sm_tasks:square", 9) == 81
            job = await client.map("sm_tasks:square", [(i,) for i in range(10)], chunk_size=1)
            assert await job.result(timeout=30) == [i * i for i in range(10)]
            assert sorted([pair async for pair in job]) == [(i, i * i) for i in range(10)]
            assert (await job.status()).state == "done"
            assert job.id in {info.job_id for info in await client.jobs()}

    asyncio.run(main())


def test_the_loop_runs_on_while_a_job_is_awaited(cluster: LocalCluster, tmp_path: Path) -> None:
    # Given a job held back until a file exists
    flag = tmp_path / "go"

    async def main() -> None:
        async with _client(cluster) as client:
            job = await client.map(
                "sm_tasks:sum_after_flag",
                [(0, str(flag))] + [(i, "") for i in range(1, 4)],
                chunk_size=1,
            )
            waiting = asyncio.ensure_future(job.result(timeout=60))
            # When the loop streams the job's other results meanwhile
            seen = []
            async for index, value in job:
                seen.append((index, value))
                if len(seen) == 3:
                    assert not waiting.done()
                    assert (await client.ping()).workers == 2  # other calls go on meanwhile
                    flag.touch()
            # Then the held item came last, and the awaited result is whole
            assert seen[-1] == (0, 0) and sorted(seen[:3]) == [(1, 10), (2, 20), (3, 30)]
            assert await waiting == [0, 10, 20, 30]

    asyncio.run(main())


def test_jobs_as_they_end_and_errors_raise(cluster: LocalCluster) -> None:
    async def main() -> None:
        async with _client(cluster) as client:
            bad = await client.map("sm_tasks:boom", [(1,)], max_attempts=1)
            good = await client.map("sm_tasks:square", [(2,)])
            ended = [job.id async for job in client.as_completed([bad, good], timeout=30)]
            assert sorted(ended) == sorted([bad.id, good.id])
            with pytest.raises(RemoteError, match="boom on 1"):
                await bad.result(timeout=30)

    asyncio.run(main())
