"""Listing and retrying jobs (what `asyncjobs jobs` and `asyncjobs retry` use), on both stores."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from asyncjobs import App, JobFailedError
from asyncjobs.ids import id_floor
from asyncjobs.store.base import JobQuery

TIMEOUT = 20.0


async def test_list_jobs_filters_and_pages_newest_first(make_app: Callable[..., App]) -> None:
    app = make_app()

    @app.job()
    async def a() -> None: ...

    @app.job(queue="other")
    async def b() -> None: ...

    async with app:
        ids = [await app.enqueue(a, delay=60), await app.enqueue(b, delay=60)]
        ids += [await app.enqueue(a, delay=60) for _ in range(3)]
        store = app.store
        everything = await store.list_jobs(JobQuery(limit=100))
        assert [r.id for r in everything] == ids[::-1]
        assert [r.id for r in await store.list_jobs(JobQuery(name="a", limit=2))] == [
            ids[4], ids[3]
        ]  # fmt: skip
        page2 = await store.list_jobs(JobQuery(name="a", before=ids[3], limit=2))
        assert [r.id for r in page2] == [ids[2], ids[0]]
        assert [r.id for r in await store.list_jobs(JobQuery(queue="other"))] == [ids[1]]
        assert await store.list_jobs(JobQuery(state="running")) == []
        assert len(await store.list_jobs(JobQuery(state="scheduled", limit=100))) == 5
        future = id_floor(app.clock.time() + 3600)
        assert await store.list_jobs(JobQuery(since=future)) == []


async def test_retry_requeues_failed_jobs_for_one_more_attempt(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    calls: list[int] = []

    @app.job()
    async def flaky() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first time")
        return len(calls)

    async with app:
        job = await app.enqueue(flaky)
        with contextlib.suppress(JobFailedError):
            await app.result(job, timeout=TIMEOUT)
        record = await app.get(job)
        assert record.state.value == "failed" and record.max_attempts == 1
        assert [r.id for r in await app.store.recent_failures(5)] == [job]
        assert await app.retry(job) == [job]
        assert await app.result(job, timeout=TIMEOUT) == 2
        record = await app.get(job)
        assert (record.attempt, record.max_attempts, record.error) == (2, 2, None)
        assert await app.store.recent_failures(5) == []  # retried: no longer a failure
        assert await app.retry(job) == []  # succeeded: not retried


async def test_retry_leaves_a_job_whose_unique_key_is_taken_again(
    make_app: Callable[..., App],
) -> None:
    app = make_app()

    @app.job()
    async def sync(site: str) -> None:
        raise RuntimeError(site)

    async with app:
        first = await app.enqueue(sync, "paris", unique_key="sync:paris")
        with contextlib.suppress(JobFailedError):
            await app.result(first, timeout=TIMEOUT)
        second = await app.enqueue(sync, "paris", unique_key="sync:paris", delay=60)
        assert second != first
        assert await app.retry(first) == []  # "sync:paris" is held by the second job
        await app.cancel(second)
        assert await app.retry(first) == [first]


async def test_queue_counts_and_live_nodes(make_app: Callable[..., App]) -> None:
    import asyncio

    gate = asyncio.Event()
    app = make_app(queues="default,reports")

    @app.job()
    async def hold() -> None:
        await gate.wait()

    @app.job(queue="reports")
    async def report() -> None: ...

    async with app:
        running = await app.enqueue(hold)
        await app.enqueue(report, delay=60)
        await app.enqueue(report, delay=120)

        async def started() -> bool:
            return (await app.get(running)).state.value == "running"

        from tests.helpers import wait_until

        await wait_until(started, timeout=TIMEOUT)
        counts = {q.queue: q for q in await app.store.queue_counts()}
        assert (counts["default"].running, counts["default"].queued) == (1, 0)
        assert (counts["reports"].scheduled, counts["reports"].running) == (2, 0)
        nodes = await app.store.live_nodes()
        assert [n.id for n in nodes] == [app.node.id]
        assert nodes[0].queues == ["default", "reports"] and nodes[0].heartbeat_age_s < 30
        gate.set()
