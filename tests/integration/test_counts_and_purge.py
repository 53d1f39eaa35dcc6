"""``app.counts()`` and ``app.purge()``, on both stores: exact counts, and a purge that never
touches a running job, loses no job it did not delete, and leaves no dependent waiting."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from asyncjobs import (
    App,
    InvalidArgumentError,
    JobNotFoundError,
    JobState,
    Workflow,
)
from tests.helpers import wait_until

UNFINISHED = {"scheduled": 0, "waiting": 0, "queued": 0, "running": 0}
FINISHED = {"succeeded": 0, "failed": 0, "cancelled": 0, "lost": 0}


def build(make_app: Callable[..., App], **overrides: Any) -> tuple[App, asyncio.Event]:
    app = make_app(queues="vms,other,race", **overrides)
    gate = asyncio.Event()

    @app.job(queue="vms")
    async def hold() -> str:
        await gate.wait()
        return "held"

    @app.job(queue="vms")
    async def noop(n: int = 0) -> int:
        return n

    @app.job(queue="vms")
    async def boom() -> None:
        raise RuntimeError("boom")

    @app.job(queue="other")
    async def elsewhere() -> None:
        return None

    return app, gate


@pytest.fixture
async def producer(make_app: Callable[..., App]) -> AsyncIterator[App]:
    """An app that only produces (no node), so jobs stay where the test puts them."""
    app, _ = build(make_app)
    await app.start(node=False)
    try:
        yield app
    finally:
        await app.stop()


async def test_counts_give_each_unfinished_state_of_a_queue_and_of_all_queues(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app, concurrency=2)
    async with app:
        running = [await app.enqueue("hold") for _ in range(2)]
        for _ in range(3):
            await app.enqueue("hold")  # queued behind the two running ones
        await app.enqueue("noop", delay=3600)
        wf = Workflow()
        first = wf.add(app.signature("noop", 1).set(delay=3600))
        wf.add(app.signature("noop", 2), after=[first])
        await app.submit(wf)
        await app.enqueue("elsewhere", delay=3600)

        async def two_running() -> bool:
            return (await app.counts("vms"))["running"] == 2

        await wait_until(two_running, what="two running jobs")
        assert await app.counts("vms") == {**UNFINISHED, "running": 2, "queued": 3,
                                           "scheduled": 2, "waiting": 1}  # fmt: skip
        assert await app.counts("other") == {**UNFINISHED, "scheduled": 1}
        assert await app.counts() == {**UNFINISHED, "running": 2, "queued": 3,
                                      "scheduled": 3, "waiting": 1}  # fmt: skip
        assert await app.counts("nothing-here") == UNFINISHED
        gate.set()
        for job_id in running:
            await app.result(job_id, timeout=10)


async def test_counts_of_finished_states_are_given_when_asked(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app)
    gate.set()
    async with app:
        done = [await app.enqueue("noop") for _ in range(3)]
        failed = await app.enqueue("boom")
        cancelled = await app.enqueue("noop", delay=3600)
        await app.cancel(cancelled)
        for job_id in done:
            await app.result(job_id, timeout=10)
        with pytest.raises(Exception, match="boom"):
            await app.result(failed, timeout=10)
        counts = await app.counts("vms", finished=True)
        assert counts == {**UNFINISHED, **FINISHED, "succeeded": 3, "failed": 1, "cancelled": 1}
        assert "succeeded" not in await app.counts("vms")


async def test_purge_deletes_the_queued_jobs_of_one_queue_and_says_how_many(
    producer: App,
) -> None:
    ids = await producer.enqueue_many([producer.signature("noop", i) for i in range(12_345)])
    later = await producer.enqueue("noop", delay=3600)
    other = await producer.enqueue("elsewhere")
    assert await producer.purge("vms") == {"queued": 12_345}  # in batches of 5,000
    assert await producer.counts("vms") == {**UNFINISHED, "scheduled": 1}
    with pytest.raises(JobNotFoundError):
        await producer.get(ids[7_000])
    assert (await producer.get(later)).state is JobState.SCHEDULED
    assert (await producer.get(other)).state is JobState.QUEUED
    assert await producer.purge("vms", states=["scheduled", "queued"]) == {
        "scheduled": 1,
        "queued": 0,
    }
    assert await producer.counts("vms") == UNFINISHED


async def test_purge_never_touches_a_running_job_and_refuses_to_be_asked_to(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app, concurrency=1)
    async with app:
        running = await app.enqueue("hold")

        async def started() -> bool:
            return (await app.get(running)).state is JobState.RUNNING

        await wait_until(started, what="the job to start")
        waiting_behind = await app.enqueue("hold")
        with pytest.raises(InvalidArgumentError, match="running jobs are never purged"):
            await app.purge("vms", states=["running"])
        with pytest.raises(InvalidArgumentError, match="use some of scheduled, waiting"):
            await app.purge("vms", states=["done"])
        with pytest.raises(InvalidArgumentError, match="queue"):
            await app.purge("no such queue!")
        assert await app.purge("vms", states="queued") == {"queued": 1}
        with pytest.raises(JobNotFoundError):
            await app.get(waiting_behind)
        assert (await app.get(running)).state is JobState.RUNNING
        gate.set()
        assert await app.result(running, timeout=10) == "held"


async def test_purging_a_step_that_has_not_run_cancels_its_dependents(producer: App) -> None:
    wf = Workflow()
    first = wf.add(producer.signature("noop", 1), key="first")
    second = wf.add(producer.signature("noop", 2), after=[first], key="second")
    third = wf.add(producer.signature("elsewhere"), after=[second], key="third")
    await producer.submit(wf)
    assert await producer.purge("vms") == {"queued": 1}
    for step in (second, third):  # transitively, in any queue: none is left waiting
        record = await producer.get(step.id)
        assert record.state is JobState.CANCELLED
        assert record.reason == "upstream_cancelled"
    assert await producer.counts() == UNFINISHED


async def test_a_caller_waiting_on_a_purged_job_is_told_it_is_gone(producer: App) -> None:
    job_id = await producer.enqueue("noop")
    waiting = asyncio.create_task(producer.result(job_id, timeout=30))
    await producer.purge("vms")
    with pytest.raises(JobNotFoundError):
        await asyncio.wait_for(waiting, 10)


async def test_purging_finished_jobs_keeps_the_unfinished_ones_and_frees_unique_keys(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app)
    gate.set()
    async with app:
        done = await app.enqueue("noop", unique_key="inventory")
        await app.result(done, timeout=10)
        pending = await app.enqueue("noop", delay=3600)
        assert await app.purge("vms", states=["succeeded"]) == {"succeeded": 1}
        with pytest.raises(JobNotFoundError):
            await app.get(done)
        assert (await app.get(pending)).state is JobState.SCHEDULED
        again = await app.enqueue("noop", unique_key="inventory")
        assert again != done
        assert await app.purge("vms", states=["scheduled", "queued"]) in (
            {"scheduled": 1, "queued": 1},
            {"scheduled": 1, "queued": 0},  # the node had claimed the new one already
        )


async def test_a_purge_racing_a_draining_node_deletes_or_runs_each_job_never_both(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app, concurrency=20)
    gate.set()
    ran: list[int] = []

    @app.job(queue="race", name="count_run")
    async def count_run(n: int) -> int:
        ran.append(n)
        return n

    async with app:
        total = 6_000
        ids = await app.enqueue_many([count_run.s(i) for i in range(total)])
        await wait_until(lambda: len(ran) >= 200, what="the node to be draining the queue")
        deleted = (await app.purge("race"))["queued"]

        async def settled() -> bool:
            counts = await app.counts("race")
            return counts["queued"] == counts["running"] == 0

        await wait_until(settled, timeout=60, what="the queue to settle")
        assert len(ran) == len(set(ran)), "a job ran twice"
        assert len(ran) + deleted == total, (len(ran), deleted)
        for n in (0, total // 2, total - 1):
            if n in ran:
                assert await app.result(ids[n], timeout=10) == n
            else:
                with pytest.raises(JobNotFoundError):
                    await app.get(ids[n])


async def test_parked_jobs_are_counted_as_queued_and_purged_with_them(
    make_app: Callable[..., App],
) -> None:
    app, gate = build(make_app, concurrency=5)
    async with app:
        holder = await app.enqueue("hold", concurrency_key="array-7")
        parked = await app.enqueue("hold", concurrency_key="array-7")

        async def one_parked() -> bool:
            return any(q.parked == 1 for q in await app.store.queue_counts())

        await wait_until(one_parked, what="the second job to be parked behind the first")
        assert await app.counts("vms") == {**UNFINISHED, "running": 1, "queued": 1}
        assert await app.purge("vms") == {"queued": 1}
        with pytest.raises(JobNotFoundError):
            await app.get(parked)
        gate.set()
        assert await app.result(holder, timeout=10) == "held"
