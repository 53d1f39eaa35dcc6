"""The store's side of durable jobs, on both stores: step records, fencing, parking, waking,
and what the reaper does with a durable job and with a step in doubt."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from asyncjobs import JobState, Settings
from asyncjobs.app import make_store
from asyncjobs.ids import new_id
from asyncjobs.store.base import NewJob, NodeInfo, Outcome, StepWrite, Store

ARGS = orjson.dumps(([], {}))


@pytest.fixture
async def store(any_settings: Settings) -> AsyncIterator[Store]:
    s = make_store(any_settings)
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def node(store: Store, durable: tuple[str, ...] = ()) -> NodeInfo:
    info = NodeInfo(new_id(), "test-host", 1, "0", ("default",), 100, durable)
    await store.register_node(info)
    return info


async def running(store: Store, owner: NodeInfo, name: str = "flow", **kw: Any) -> Any:
    job = NewJob(new_id(), name, "default", 0, "queued", ARGS, time.time(), 1, None, **kw)
    await store.enqueue([job])
    (claimed,) = await store.claim(owner.id, {"default": 100}, time.time())
    assert claimed.id == job.id
    return claimed


def step(seq: int, state: str, *, idempotent: bool = False, result: Any = None) -> StepWrite:
    now = time.time()
    return StepWrite(
        seq, "call", f"s{seq}", state, idempotent, b"d" * 16, "[[],{}]", now,
        None if state == "running" else now,
        None if result is None else orjson.dumps(result),
    )  # fmt: skip


async def dead(store: Store, victim: NodeInfo) -> None:
    """Kill ``victim`` (stopped, so reapable at once) and reap it from another node."""
    await store.deregister_node(victim.id)
    reaper = await node(store)
    await store.reap(reaper.id, 30.0, 10)


async def test_steps_are_recorded_fenced_and_read_back_in_call_order(store: Store) -> None:
    owner = await node(store)
    job = await running(store, owner)
    assert await store.record_step(owner.id, job.id, 1, step(2, "succeeded", result={"b": 2}))
    assert await store.record_step(owner.id, job.id, 1, step(1, "running"))
    assert await store.record_step(owner.id, job.id, 1, step(1, "succeeded", result=[1]))
    steps = await store.job_steps(job.id)
    assert [(s.seq, s.name, s.state, s.result, s.attempt) for s in steps] == [
        (1, "s1", "succeeded", [1], 1),
        (2, "s2", "succeeded", {"b": 2}, 1),
    ]
    assert steps[0].node_id == owner.id and steps[0].digest == b"d" * 16
    # Stale: another attempt, another node, or a job that no longer runs.
    other = await node(store)
    assert not await store.record_step(owner.id, job.id, 2, step(3, "succeeded"))
    assert not await store.record_step(other.id, job.id, 1, step(3, "succeeded"))
    outcome = Outcome(job.id, 1, "succeeded", None, None, time.time(), None, None)
    assert await store.complete(owner.id, [outcome]) == []
    assert not await store.record_step(owner.id, job.id, 1, step(3, "succeeded"))
    assert [s.seq for s in await store.job_steps(job.id)] == [1, 2]


async def test_the_reaper_loses_a_job_whose_step_is_in_doubt_and_names_the_step(
    store: Store,
) -> None:
    owner = await node(store, durable=("flow",))
    job = await running(store, owner)
    await store.record_step(owner.id, job.id, 1, step(1, "succeeded", result=1))
    await store.record_step(owner.id, job.id, 1, step(2, "running"))
    await dead(store, owner)
    record = await store.get(job.id)
    assert record is not None and record.state is JobState.LOST
    assert record.reason == f"step 's2' (#2) was running on node {owner.id} when it died"


@pytest.mark.parametrize("why", ["declared durable", "completed a step"])
async def test_the_reaper_queues_a_durable_job_again_with_one_more_attempt(
    store: Store, why: str
) -> None:
    owner = await node(store, durable=("flow",) if why == "declared durable" else ())
    job = await running(store, owner)  # at most once: max_attempts 1
    if why == "completed a step":
        await store.record_step(owner.id, job.id, 1, step(1, "succeeded", result=1))
    await store.record_step(owner.id, job.id, 1, step(2, "running", idempotent=True)._replace(
        state="failed"))  # fmt: skip
    await dead(store, owner)
    record = await store.get(job.id)
    assert record is not None and record.state is JobState.QUEUED
    assert (record.attempt, record.max_attempts) == (1, 2)  # a resume is not a retry
    again = await node(store)
    (claimed,) = await store.claim(again.id, {"default": 10}, time.time())
    assert claimed.attempt == 2
    assert [s.seq for s in await store.job_steps(job.id)] == (
        [1, 2] if why == "completed a step" else [2]
    )


async def test_a_job_that_is_not_durable_and_completed_no_step_is_lost_as_before(
    store: Store,
) -> None:
    owner = await node(store, durable=("other",))
    job = await running(store, owner)
    await dead(store, owner)
    record = await store.get(job.id)
    assert record is not None and record.state is JobState.LOST
    assert "stopped heartbeating" in (record.reason or "")


async def test_a_sleep_parks_the_job_scheduled_and_frees_it_for_the_promoter(
    store: Store,
) -> None:
    owner = await node(store)
    job = await running(store, owner)
    due = time.time() + 3600
    sleep = StepWrite(1, "sleep", "sleep", "succeeded", True, None, None, 1.0, 1.0,
                      orjson.dumps({"until": due}))  # fmt: skip
    parked = await store.park(owner.id, job.id, 1, "sleeping", until=due, step=sleep)
    assert parked.parked and parked.owned
    record = await store.get(job.id)
    assert record is not None and record.state is JobState.SCHEDULED
    assert abs(record.run_at.timestamp() - due) < 0.01 and record.max_attempts == 2
    assert [s.kind for s in await store.job_steps(job.id)] == ["sleep"]
    promoted = await store.promote_due(due + 1, 10)
    assert promoted.moved == 1
    assert (await store.get(job.id)).state is JobState.QUEUED  # type: ignore[union-attr]
    # A stale attempt parks nothing.
    stale = await store.park(owner.id, job.id, 1, "sleeping", until=due)
    assert not stale.parked and not stale.owned


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled", "lost", "purged"])
async def test_a_job_parked_on_another_is_queued_again_however_that_one_ends(
    store: Store, end: str
) -> None:
    owner = await node(store)
    if end == "purged":  # a job purged before it ran
        pending = NewJob(new_id(), "p", "default", 0, "scheduled", ARGS, time.time() + 999, 1,
                         None)  # fmt: skip
        await store.enqueue([pending])
        awaited_id = pending.id
    else:
        awaited_id = (await running(store, owner, name="awaited")).id
    waiter = await running(store, owner, name="waiter")
    assert (await store.park(owner.id, waiter.id, 1, "waiting", wait_on=awaited_id)).parked
    assert (await store.get(waiter.id)).state is JobState.WAITING  # type: ignore[union-attr]
    if end in ("succeeded", "failed"):
        outcome = Outcome(awaited_id, 1, end, None, None, time.time(), None, None)
        assert await store.complete(owner.id, [outcome]) == []
    elif end == "cancelled":
        await store.cancel(awaited_id, "no", time.time())  # running: a request...
        outcome = Outcome(awaited_id, 1, "cancelled", None, None, time.time(), None, None)
        await store.complete(owner.id, [outcome])  # ...its node then ends it
    elif end == "lost":
        await dead(store, owner)  # the waiter is parked, not running: only awaited ends lost
    else:
        assert await store.purge_jobs("default", "scheduled", 10, None) == [awaited_id]
    record = await store.get(waiter.id)
    assert record is not None and record.state is JobState.QUEUED, record


async def test_waiting_on_a_job_that_has_ended_or_does_not_exist_parks_nothing(
    store: Store,
) -> None:
    owner = await node(store)
    awaited = await running(store, owner, name="awaited")
    done = Outcome(awaited.id, 1, "succeeded", None, None, time.time(), None, None)
    await store.complete(owner.id, [done])
    waiter = await running(store, owner, name="waiter")
    for target in (awaited.id, new_id()):
        result = await store.park(owner.id, waiter.id, 1, "waiting", wait_on=target)
        assert (result.parked, result.owned) == (False, True)
    assert (await store.get(waiter.id)).state is JobState.RUNNING  # type: ignore[union-attr]


async def test_prune_and_purge_take_a_jobs_steps_with_it(store: Store) -> None:
    owner = await node(store)
    job = await running(store, owner)
    await store.record_step(owner.id, job.id, 1, step(1, "succeeded", result=1))
    await store.complete(owner.id, [Outcome(job.id, 1, "succeeded", None, None, 1.0, None, None)])
    assert await store.purge_jobs("default", "succeeded", 10, None) == [job.id]
    assert await store.job_steps(job.id) == []
