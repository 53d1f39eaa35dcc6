"""Concurrent enqueue() calls are coalesced into one write per round trip."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from asyncjobs.enqueue import EnqueueBatcher
from asyncjobs.ids import new_id
from asyncjobs.jobs import JobId
from asyncjobs.store.base import NewJob
from asyncjobs.store.memory import MemoryStore


class SlowStore(MemoryStore):
    """A MemoryStore whose writes take one simulated round trip, recording batch sizes."""

    def __init__(self, round_trip: asyncio.Event | None = None) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail_next: BaseException | None = None
        self.round_trip = round_trip

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        self.batches.append(len(jobs))
        if self.round_trip is not None:
            await self.round_trip.wait()
        else:
            await asyncio.sleep(0.001)
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        return await super().enqueue(jobs)


def new_job(unique_key: str | None = None) -> NewJob:
    return NewJob(new_id(), "j", "default", 0, "queued", b"[[],{}]", 0.0, 1, unique_key)


async def test_a_lone_caller_writes_at_once_in_one_round_trip() -> None:
    store = SlowStore()
    batcher = EnqueueBatcher(store, max_batch=100)
    for _ in range(5):
        job = new_job()
        assert await batcher.submit(job) == job.id
    assert store.batches == [1, 1, 1, 1, 1]


async def test_callers_that_overlap_a_write_share_the_next_one() -> None:
    gate = asyncio.Event()
    store = SlowStore(round_trip=gate)
    batcher = EnqueueBatcher(store, max_batch=1000)
    jobs = [new_job() for _ in range(100)]
    tasks = [asyncio.create_task(batcher.submit(j)) for j in jobs]
    while len(store.batches) < 1:
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # let every task reach the batcher while the first write waits
    gate.set()
    assert await asyncio.gather(*tasks) == [j.id for j in jobs]
    assert store.batches == [1, 99]


async def test_batches_never_exceed_the_maximum_size() -> None:
    gate = asyncio.Event()
    store = SlowStore(round_trip=gate)
    batcher = EnqueueBatcher(store, max_batch=30)
    tasks = [asyncio.create_task(batcher.submit(new_job())) for _ in range(100)]
    while not store.batches:
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(*tasks)
    assert store.batches == [1, 30, 30, 30, 9]


async def test_a_failed_write_fails_exactly_the_callers_in_that_batch() -> None:
    gate = asyncio.Event()
    store = SlowStore(round_trip=gate)
    batcher = EnqueueBatcher(store, max_batch=1000)
    first = asyncio.create_task(batcher.submit(new_job()))
    while not store.batches:
        await asyncio.sleep(0)
    others = [asyncio.create_task(batcher.submit(new_job())) for _ in range(10)]
    await asyncio.sleep(0)
    store.fail_next = ConnectionError("database went away")
    gate.set()
    with pytest.raises(ConnectionError):
        await first
    results = await asyncio.gather(*others, return_exceptions=True)
    assert all(isinstance(r, JobId) for r in results), results  # the next batch was fine
    late = new_job()
    assert await batcher.submit(late) == late.id


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    gate = asyncio.Event()
    store = SlowStore(round_trip=gate)
    batcher = EnqueueBatcher(store, max_batch=1000)
    first = asyncio.create_task(batcher.submit(new_job()))
    while not store.batches:
        await asyncio.sleep(0)
    waiting = [asyncio.create_task(batcher.submit(new_job())) for _ in range(5)]
    await asyncio.sleep(0)
    waiting[2].cancel()
    gate.set()
    await first
    done = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert sum(isinstance(r, JobId) for r in done) == 4
    await batcher.drain()
    assert len(store.jobs) == 6  # the cancelled caller's job may still be written (documented)


async def test_drain_waits_for_pending_writes() -> None:
    gate = asyncio.Event()
    store = SlowStore(round_trip=gate)
    batcher = EnqueueBatcher(store, max_batch=1000)
    first = asyncio.create_task(batcher.submit(new_job()))
    while not store.batches:
        await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(new_job())) for _ in range(3)]
    await asyncio.sleep(0)
    drained = asyncio.create_task(batcher.drain())
    gate.set()
    await first
    await drained
    assert all(t.done() for t in rest) and len(store.jobs) == 4
