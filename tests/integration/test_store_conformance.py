"""One conformance suite for every Store: the same assertions against MemoryStore and Postgres.

Each test states a guarantee from store/base.py and tries to break it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import orjson
import pytest

from asyncjobs import JobState, ScheduleNotFoundError, Settings
from asyncjobs.app import make_store
from asyncjobs.ids import new_id, new_ids
from asyncjobs.schedules import ScheduleDef, make_schedule
from asyncjobs.store.base import ClaimedJob, NewJob, NodeInfo, Outcome, Store, StoreEvent
from tests.helpers import wait_until

NOW = 1_800_000_000.0  # a fixed "now" (2027-01-15) keeps the tests independent of the clock
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


def job(
    name: str = "j",
    *,
    queue: str = "default",
    priority: int = 0,
    state: str = "queued",
    run_at: float = NOW,
    max_attempts: int = 1,
    unique_key: str | None = None,
    args: bytes = ARGS,
) -> NewJob:
    return NewJob(new_id(), name, queue, priority, state, args, run_at, max_attempts, unique_key)


def node() -> NodeInfo:
    return NodeInfo(new_id(), "test-host", 1, "0", ("default",), 10)


def success(claimed_id: object, attempt: int = 1, result: bytes | None = b'"ok"') -> Outcome:
    return Outcome(claimed_id, attempt, "succeeded", result, None, NOW + 1, None, None)  # type: ignore[arg-type]


async def registered(store: Store) -> NodeInfo:
    info = node()
    await store.register_node(info)
    return info


# -- enqueue and get --


async def test_enqueued_job_reads_back_with_its_fields(store: Store) -> None:
    new = job("provision", queue="vm", priority=5, args=orjson.dumps(([1, "a"], {"k": True})))
    assert await store.enqueue([new]) == [new.id]
    record = await store.get(new.id)
    assert record is not None
    assert (record.name, record.queue, record.priority, record.state) == (
        "provision",
        "vm",
        5,
        JobState.QUEUED,
    )
    assert (record.args, record.kwargs) == ([1, "a"], {"k": True})
    assert record.attempt == 0
    assert record.run_at.timestamp() == pytest.approx(NOW)


async def test_get_of_unknown_id_is_none(store: Store) -> None:
    assert await store.get(new_id()) is None


async def test_enqueue_of_existing_id_is_not_a_second_job(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    assert await store.enqueue([new]) == [new.id]  # a retried insert
    info = await registered(store)
    claimed = await store.claim(info.id, {"default": 10}, NOW)
    assert [c.id for c in claimed] == [new.id]


async def test_unique_key_returns_the_unfinished_job_instead_of_inserting(store: Store) -> None:
    first = job(unique_key="vm:42")
    second = job(unique_key="vm:42")
    assert await store.enqueue([first]) == [first.id]
    assert await store.enqueue([second]) == [first.id]
    assert await store.get(second.id) is None


async def test_unique_key_within_one_batch_keeps_the_first(store: Store) -> None:
    a, b, c = job(unique_key="k"), job(unique_key="k"), job(unique_key="other")
    assert await store.enqueue([a, b, c]) == [a.id, a.id, c.id]


async def test_unique_key_is_free_again_once_the_job_finished(store: Store) -> None:
    first = job(unique_key="nightly")
    await store.enqueue([first])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    assert await store.complete(info.id, [success(first.id)]) == []
    second = job(unique_key="nightly")
    assert await store.enqueue([second]) == [second.id]


async def test_bulk_enqueue_writes_nothing_when_the_iterable_fails(store: Store) -> None:
    good = [job() for _ in range(300)]

    def items() -> Iterator[NewJob]:
        yield from good
        raise ValueError("bad job 301")

    with pytest.raises(ValueError, match="bad job 301"):
        await store.enqueue_bulk(items())
    for new in good[:3] + good[-3:]:
        assert await store.get(new.id) is None
    info = await registered(store)
    assert await store.claim(info.id, {"default": 1000}, NOW) == []


async def test_bulk_enqueue_writes_every_job(store: Store) -> None:
    jobs = [job(priority=i % 3) for i in range(500)] + [job(state="scheduled", run_at=NOW + 60)]
    await store.enqueue_bulk(iter(jobs))
    info = await registered(store)
    claimed = await store.claim(info.id, {"default": 1000}, NOW)
    assert len(claimed) == 500
    scheduled = await store.get(jobs[-1].id)
    assert scheduled is not None and scheduled.state is JobState.SCHEDULED


# -- claiming --


async def test_claim_takes_higher_priority_first_then_oldest(store: Store) -> None:
    # Which jobs a claim takes is the guarantee (rows of one batch come back in any order).
    low1, high, low2 = job(priority=0), job(priority=10), job(priority=0)
    await store.enqueue([low1])
    await store.enqueue([high])
    await store.enqueue([low2])
    info = await registered(store)
    first = await store.claim(info.id, {"default": 2}, NOW)
    assert {c.id for c in first} == {high.id, low1.id}
    rest = await store.claim(info.id, {"default": 2}, NOW)
    assert [c.id for c in rest] == [low2.id]


async def test_claim_respects_the_limit_of_each_queue_and_ignores_other_queues(
    store: Store,
) -> None:
    await store.enqueue([job(queue="a") for _ in range(5)] + [job(queue="b") for _ in range(5)])
    await store.enqueue([job(queue="c")])
    info = await registered(store)
    claimed = await store.claim(info.id, {"a": 2, "b": 3}, NOW)
    assert sorted(c.queue for c in claimed) == ["a", "a", "b", "b", "b"]


async def test_claimed_job_is_running_with_attempt_and_node(store: Store) -> None:
    new = job(max_attempts=3)
    await store.enqueue([new])
    info = await registered(store)
    (claimed,) = await store.claim(info.id, {"default": 5}, NOW)
    assert (claimed.id, claimed.attempt, claimed.max_attempts) == (new.id, 1, 3)
    assert orjson.loads(claimed.args) == [[], {}]  # jsonb re-renders the text; same value
    record = await store.get(new.id)
    assert record is not None
    assert record.state is JobState.RUNNING and record.node_id == info.id
    assert record.started_at is not None


async def test_concurrent_claims_never_take_the_same_job_twice(store: Store) -> None:
    jobs = [job() for _ in range(400)]
    await store.enqueue(jobs)
    nodes = [await registered(store) for _ in range(4)]

    async def drain(info: NodeInfo) -> list[object]:
        taken: list[object] = []
        while True:
            batch = await store.claim(info.id, {"default": 7}, NOW)
            if not batch:
                return taken
            taken.extend(c.id for c in batch)

    results = await asyncio.gather(*(drain(n) for n in nodes))
    all_taken = [i for r in results for i in r]
    assert len(all_taken) == len(set(all_taken)) == 400


async def test_scheduled_job_is_not_claimed_before_it_is_promoted(store: Store) -> None:
    later = job(state="scheduled", run_at=NOW + 30)
    await store.enqueue([later])
    info = await registered(store)
    assert await store.claim(info.id, {"default": 5}, NOW) == []
    early = await store.promote_due(NOW, 100)
    assert early.moved == 0 and early.next_run_at == pytest.approx(NOW + 30)
    due = await store.promote_due(NOW + 31, 100)
    assert due.moved == 1 and due.next_run_at is None
    assert [c.id for c in await store.claim(info.id, {"default": 5}, NOW + 31)] == [later.id]


async def test_promote_moves_at_most_the_limit(store: Store) -> None:
    await store.enqueue([job(state="scheduled", run_at=NOW + i) for i in range(1, 6)])
    assert (await store.promote_due(NOW + 10, 3)).moved == 3
    assert (await store.promote_due(NOW + 10, 3)).moved == 2


# -- completing and fencing --


async def test_completion_records_result_and_end_time(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    assert await store.complete(info.id, [success(new.id, result=b"[1,2]")]) == []
    record = await store.get(new.id)
    assert record is not None
    assert record.state is JobState.SUCCEEDED and record.result == [1, 2]
    assert record.finished_at is not None and record.finished_at.timestamp() == NOW + 1


async def test_completion_from_another_node_is_rejected(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    owner, intruder = await registered(store), await registered(store)
    await store.claim(owner.id, {"default": 1}, NOW)
    assert await store.complete(intruder.id, [success(new.id)]) == [new.id]
    record = await store.get(new.id)
    assert record is not None and record.state is JobState.RUNNING


async def test_completion_of_a_stale_attempt_is_rejected_and_never_overwrites(store: Store) -> None:
    new = job(max_attempts=2)
    await store.enqueue([new])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    retry = Outcome(new.id, 1, "queued", None, b'{"type":"E"}', NOW, NOW, "retry")
    assert await store.complete(info.id, [retry]) == []
    await store.claim(info.id, {"default": 1}, NOW)  # attempt 2
    stale = success(new.id, attempt=1, result=b'"stale"')
    fresh = success(new.id, attempt=2, result=b'"fresh"')
    assert await store.complete(info.id, [stale]) == [new.id]
    assert await store.complete(info.id, [fresh]) == []
    assert await store.complete(info.id, [fresh]) == [new.id]  # a duplicate is stale too
    record = await store.get(new.id)
    assert record is not None and record.result == "fresh" and record.attempt == 2


async def test_of_two_outcomes_for_one_job_in_a_batch_the_first_valid_one_wins(
    store: Store,
) -> None:
    a, b = job(max_attempts=3), job()
    await store.enqueue([a, b])
    info = await registered(store)
    await store.claim(info.id, {"default": 2}, NOW)
    outcomes = [
        success(a.id, attempt=5),  # stale: rejected, so the next one is the first valid
        Outcome(a.id, 1, "queued", None, b'{"type":"E"}', NOW, NOW, "retry"),
        success(a.id, result=b'"late"'),  # the job is no longer running attempt 1
        success(b.id),
        success(b.id),
    ]
    assert sorted(await store.complete(info.id, outcomes)) == sorted([a.id, a.id, b.id])
    ra, rb = await store.get(a.id), await store.get(b.id)
    assert ra is not None and ra.state is JobState.QUEUED and ra.result is None
    assert rb is not None and rb.state is JobState.SUCCEEDED


async def test_one_batch_applies_the_good_outcomes_and_rejects_the_stale(store: Store) -> None:
    jobs = [job() for _ in range(5)]
    await store.enqueue(jobs)
    info = await registered(store)
    await store.claim(info.id, {"default": 5}, NOW)
    outcomes = [success(j.id) for j in jobs]
    outcomes[2] = success(jobs[2].id, attempt=7)
    assert await store.complete(info.id, outcomes) == [jobs[2].id]
    states = [(await store.get(j.id)).state for j in jobs]  # type: ignore[union-attr]
    assert states.count(JobState.SUCCEEDED) == 4 and states[2] is JobState.RUNNING


async def test_retry_outcome_requeues_or_schedules_with_the_error_kept(store: Store) -> None:
    now_job, later_job = job(max_attempts=3), job(max_attempts=3)
    await store.enqueue([now_job, later_job])
    info = await registered(store)
    await store.claim(info.id, {"default": 2}, NOW)
    error = b'{"type":"TimeoutError","message":"slow","traceback":""}'
    await store.complete(
        info.id,
        [
            Outcome(now_job.id, 1, "queued", None, error, NOW, NOW, "attempt 1 of 3 raised"),
            Outcome(later_job.id, 1, "scheduled", None, error, NOW, NOW + 5, "attempt 1"),
        ],
    )
    a, b = await store.get(now_job.id), await store.get(later_job.id)
    assert a is not None and b is not None
    assert a.state is JobState.QUEUED and a.error == {
        "type": "TimeoutError",
        "message": "slow",
        "traceback": "",
    }
    assert a.finished_at is None and a.reason == "attempt 1 of 3 raised"
    assert b.state is JobState.SCHEDULED and b.run_at.timestamp() == pytest.approx(NOW + 5)
    (again,) = await store.claim(info.id, {"default": 5}, NOW)
    assert again.id == now_job.id and again.attempt == 2


# -- cancel, watch, heartbeat, events --


async def test_cancel_ends_a_pending_job_at_once(store: Store) -> None:
    queued, scheduled = job(), job(state="scheduled", run_at=NOW + 100)
    await store.enqueue([queued, scheduled])
    assert await store.cancel(queued.id, "not needed", NOW) is JobState.CANCELLED
    assert await store.cancel(scheduled.id, "not needed", NOW) is JobState.CANCELLED
    record = await store.get(queued.id)
    assert record is not None and record.reason == "not needed" and record.finished_at
    info = await registered(store)
    assert await store.claim(info.id, {"default": 5}, NOW) == []
    assert (await store.promote_due(NOW + 1000, 10)).moved == 0


async def test_cancel_of_a_running_job_flags_it_and_the_heartbeat_reports_it(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    assert await store.cancel(new.id, "operator", NOW) is JobState.RUNNING
    beat = await store.heartbeat(info.id, 1)
    assert beat.alive and beat.cancel_requested == [new.id]
    cancelled = Outcome(new.id, 1, "cancelled", None, None, NOW, None, None)
    assert await store.complete(info.id, [cancelled]) == []
    record = await store.get(new.id)
    assert record is not None and record.state is JobState.CANCELLED
    assert record.reason == "operator"  # kept from the request


@pytest.mark.parametrize("retry_state", ["queued", "scheduled"])
async def test_a_retry_of_a_job_asked_to_cancel_ends_it_cancelled(
    store: Store, retry_state: str
) -> None:
    new = job(max_attempts=3)
    await store.enqueue([new])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    await store.cancel(new.id, "operator", NOW)
    # The job failed before its node acted on the request, and would be retried.
    retry = Outcome(new.id, 1, retry_state, None, b'{"type":"E"}', NOW, NOW + 5, "attempt 1")
    assert await store.complete(info.id, [retry]) == []
    record = await store.get(new.id)
    assert record is not None and record.state is JobState.CANCELLED
    assert record.reason == "operator" and record.finished_at is not None
    assert await store.claim(info.id, {"default": 1}, NOW + 10) == []
    assert (await store.promote_due(NOW + 10, 10)).moved == 0


async def test_a_retry_of_a_job_without_attempts_left_ends_it_failed(store: Store) -> None:
    once = job(max_attempts=1)
    await store.enqueue([once])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    retry = Outcome(once.id, 1, "queued", None, b'{"type":"E"}', NOW, NOW, "attempt 1")
    assert await store.complete(info.id, [retry]) == []
    record = await store.get(once.id)
    assert record is not None and record.state is JobState.FAILED
    assert record.error == {"type": "E"} and record.finished_at is not None
    assert await store.claim(info.id, {"default": 1}, NOW) == []  # never runs twice


async def test_cancel_leaves_a_finished_job_alone(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    info = await registered(store)
    await store.claim(info.id, {"default": 1}, NOW)
    await store.complete(info.id, [success(new.id)])
    assert await store.cancel(new.id, "too late", NOW) is JobState.SUCCEEDED
    assert await store.cancel(new_id(), "nothing", NOW) is None


async def test_heartbeat_of_an_unknown_node_says_it_is_not_alive(store: Store) -> None:
    assert (await store.heartbeat(new_id(), 0)).alive is False


async def test_events_announce_ready_queues_cancels_and_finished_watched_jobs(
    store: Store,
) -> None:
    events: list[StoreEvent] = []
    async with anyio.create_task_group() as tg:
        await tg.start(store.listen, events.append)  # returns once the store is listening
        watched = job(queue="reports")
        await store.enqueue([watched])
        await wait_until(lambda: StoreEvent("queue", "reports") in events)
        later = job(state="scheduled", run_at=NOW + 3)
        await store.enqueue([later])
        await wait_until(lambda: any(e.kind == "scheduled" for e in events))
        scheduled = [float(e.value) for e in events if e.kind == "scheduled"]
        assert scheduled[0] == pytest.approx(NOW + 3)

        info = await registered(store)
        await store.claim(info.id, {"reports": 1}, NOW)
        record = await store.watch(watched.id)
        assert record is not None and record.state is JobState.RUNNING
        await store.cancel(watched.id, "stop", NOW)
        await wait_until(lambda: StoreEvent("cancel", str(watched.id)) in events)
        cancelled = Outcome(watched.id, 1, "cancelled", None, None, NOW, None, None)
        await store.complete(info.id, [cancelled])
        await wait_until(lambda: StoreEvent("finished", str(watched.id)) in events)
        unwatched = job(queue="reports")
        await store.enqueue([unwatched])
        (claimed,) = await store.claim(info.id, {"reports": 1}, NOW)
        await store.complete(info.id, [success(claimed.id)])
        await wait_until(lambda: events.count(StoreEvent("queue", "reports")) >= 2)
        assert StoreEvent("finished", str(unwatched.id)) not in events  # nobody waits for it
        tg.cancel_scope.cancel()


async def test_watch_of_a_finished_job_returns_it_finished(store: Store) -> None:
    new = job()
    await store.enqueue([new])
    await store.cancel(new.id, "x", NOW)
    record = await store.watch(new.id)
    assert record is not None and record.state is JobState.CANCELLED
    assert await store.watch(new_id()) is None


async def test_many_ids_from_one_batch_are_distinct_and_ordered() -> None:
    ids = new_ids(50_000)
    assert len(set(ids)) == 50_000 and ids == sorted(ids)


# -- reaping and pruning (issue 3) --


async def dead_node_with_jobs(store: Store) -> tuple[NodeInfo, dict[str, NewJob]]:
    """A node running three jobs: one retryable, one on its last attempt, one to be cancelled."""
    info = await registered(store)
    jobs = {
        "retryable": job("r", max_attempts=2),
        "last": job("l", max_attempts=1),
        "cancel": job("c", max_attempts=3),
    }
    await store.enqueue(list(jobs.values()))
    assert len(await store.claim(info.id, {"default": 3}, NOW)) == 3
    await store.cancel(jobs["cancel"].id, "operator", NOW)
    await asyncio.sleep(0.01)  # the heartbeat is now strictly in the past
    return info, jobs


async def test_reaping_a_silent_node_requeues_loses_or_cancels_its_jobs(store: Store) -> None:
    info, jobs = await dead_node_with_jobs(store)
    reaper = await registered(store)
    (reaped,) = await store.reap(reaper.id, 0.0, 10)
    assert (reaped.node_id, reaped.requeued, reaped.lost, reaped.cancelled) == (info.id, 1, 1, 1)
    retryable = await store.get(jobs["retryable"].id)
    last = await store.get(jobs["last"].id)
    cancelled = await store.get(jobs["cancel"].id)
    assert retryable is not None and last is not None and cancelled is not None
    assert retryable.state is JobState.QUEUED and retryable.attempt == 1
    assert retryable.reason is not None and retryable.reason.startswith(f"node {info.id} stopped")
    assert last.state is JobState.LOST and last.finished_at is not None
    assert last.reason is not None
    assert re.fullmatch(
        rf"node {info.id} stopped heartbeating at \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{{3}}Z",
        last.reason,
    )
    assert cancelled.state is JobState.CANCELLED and cancelled.reason == "operator"
    (again,) = await store.claim(reaper.id, {"default": 5}, NOW)  # the retry, attempt 2
    assert again.id == jobs["retryable"].id and again.attempt == 2


async def test_a_reaped_node_cannot_heartbeat_claim_or_complete(store: Store) -> None:
    info, jobs = await dead_node_with_jobs(store)
    reaper = await registered(store)
    await store.reap(reaper.id, 0.0, 10)
    assert (await store.heartbeat(info.id, 3)).alive is False
    await store.enqueue([job("fresh")])
    assert await store.claim(info.id, {"default": 5}, NOW) == []
    late = success(jobs["retryable"].id, attempt=1)
    assert await store.complete(info.id, [late]) == [jobs["retryable"].id]
    record = await store.get(jobs["retryable"].id)
    assert record is not None and record.state is JobState.QUEUED  # the reap stands


async def test_a_live_node_is_never_reaped(store: Store) -> None:
    info = await registered(store)
    await store.enqueue([job()])
    await store.claim(info.id, {"default": 1}, NOW)
    assert (await store.heartbeat(info.id, 1)).alive
    assert await store.reap(new_id(), 3600.0, 10) == []
    assert (await store.heartbeat(info.id, 1)).alive


async def test_racing_reapers_reap_each_node_exactly_once(store: Store) -> None:
    dead = [await registered(store) for _ in range(6)]
    for info in dead:
        await store.enqueue([job(max_attempts=1)])
        await store.claim(info.id, {"default": 1}, NOW)
    await asyncio.sleep(0.01)
    reapers = [await registered(store) for _ in range(4)]
    results = await asyncio.gather(*(store.reap(r.id, 0.0, 10) for r in reapers))
    reaped = [r.node_id for result in results for r in result if r.node_id in {d.id for d in dead}]
    assert sorted(reaped) == sorted(d.id for d in dead)
    assert sum(r.lost for result in results for r in result) == 6


async def test_a_stopped_node_is_reaped_without_waiting_for_the_timeout(store: Store) -> None:
    info = await registered(store)
    await store.enqueue([job(max_attempts=2)])
    await store.claim(info.id, {"default": 1}, NOW)
    await store.deregister_node(info.id)  # e.g. its last outcomes could not be written
    (reaped,) = await store.reap(new_id(), 3600.0, 10)
    assert reaped.node_id == info.id and reaped.requeued == 1


async def test_prune_deletes_only_jobs_finished_before_the_retention_period(
    store: Store,
) -> None:
    info = await registered(store)
    old_done = [job() for _ in range(5)]
    recent_done, still_running, queued = job(), job(), job()
    await store.enqueue([*old_done, recent_done, still_running])
    await store.claim(info.id, {"default": 10}, NOW)
    now = time.time()
    await store.complete(
        info.id,
        [
            *(Outcome(j.id, 1, "succeeded", None, None, now - 100, None, None) for j in old_done),
            Outcome(recent_done.id, 1, "failed", None, b"{}", now, None, None),
        ],
    )
    await store.enqueue([queued])
    assert await store.prune(10.0, 3) == 3  # at most the limit per call
    assert await store.prune(10.0, 3) == 2
    assert await store.prune(10.0, 3) == 0
    for kept in (recent_done, still_running, queued):
        assert await store.get(kept.id) is not None
    for gone in old_done:
        assert await store.get(gone.id) is None


async def test_release_claims_gives_back_only_the_jobs_the_node_does_not_know(
    store: Store,
) -> None:
    jobs = [job(max_attempts=1) for _ in range(3)]
    await store.enqueue(jobs)
    info = await registered(store)
    await store.claim(info.id, {"default": 3}, NOW)
    assert await store.release_claims(info.id, [jobs[0].id]) == 2
    kept = await store.get(jobs[0].id)
    assert kept is not None and kept.state is JobState.RUNNING
    for released in jobs[1:]:
        record = await store.get(released.id)
        assert record is not None and record.state is JobState.QUEUED
        assert record.attempt == 0 and record.node_id is None  # as if never claimed
    again = await store.claim(info.id, {"default": 3}, NOW)
    assert sorted(c.id for c in again) == sorted(j.id for j in jobs[1:])
    assert {c.attempt for c in again} == {1}  # an at-most-once job still gets its one run


# -- schedules (issue 6) --


def every_hour(name: str = "inventory", **options: Any) -> ScheduleDef:
    template = NewJob(new_id(), "refresh", "default", 0, "queued", ARGS, 0.0, 1, None)
    defaults: dict[str, Any] = {
        "cron": None, "every": 3600.0, "tz": "UTC", "args": (), "kwargs": {}, "queue": None,
        "priority": None, "missed": "latest", "max_catchup": 100, "overlap": "allow",
        "misfire_grace": 60.0,
    }  # fmt: skip
    defaults.update(options)
    return make_schedule(name, "refresh", template=template, **defaults)


HOUR_MARK = NOW // 3600 * 3600  # a fire time of an hourly schedule


async def runs_of(store: Store, info: NodeInfo) -> list[ClaimedJob]:
    return await store.claim(info.id, {"default": 100}, NOW)


async def test_racing_nodes_fire_each_fire_time_exactly_once(store: Store) -> None:
    defn = every_hour()
    await store.sync_schedule(defn, HOUR_MARK - 10)
    results = await asyncio.gather(*(store.fire_schedule(defn, HOUR_MARK + 1) for _ in range(6)))
    fired = [r for r in results if r is not None and r.runs]
    assert len(fired) == 1  # one winner; the others found the fire time handled
    info = await registered(store)
    (run,) = await runs_of(store, info)
    record = await store.get(run.id)
    assert record is not None and record.schedule == "inventory"
    assert record.fire_at is not None and record.fire_at.timestamp() == HOUR_MARK
    (listed,) = await store.list_schedules()
    assert (listed.fired, listed.missed, listed.last_fire_at) == (1, 0, HOUR_MARK)
    assert listed.next_fire_at == HOUR_MARK + 3600
    assert await store.fire_schedule(defn, HOUR_MARK + 2) is None  # nothing new is due


async def test_a_paused_schedule_fires_nothing_and_resuming_skips_the_pause(store: Store) -> None:
    defn = every_hour()
    await store.sync_schedule(defn, HOUR_MARK - 10)
    assert await store.pause_schedule("inventory", True, HOUR_MARK)
    assert await store.fire_schedule(defn, HOUR_MARK + 5 * 3600) is None
    assert await store.pause_schedule("inventory", False, HOUR_MARK + 5 * 3600 + 10)
    assert await store.fire_schedule(defn, HOUR_MARK + 5 * 3600 + 20) is None  # no catch-up
    done = await store.fire_schedule(defn, HOUR_MARK + 6 * 3600 + 1)
    assert done is not None and [r.fire_at for r in done.runs] == [HOUR_MARK + 6 * 3600]
    assert (await store.list_schedules())[0].missed == 0
    assert not await store.pause_schedule("no-such-schedule", True, NOW)


async def test_redeclaring_a_schedule_keeps_its_state(store: Store) -> None:
    defn = every_hour()
    await store.sync_schedule(defn, HOUR_MARK - 10)
    await store.fire_schedule(defn, HOUR_MARK + 1)
    await store.pause_schedule("inventory", True, HOUR_MARK + 2)
    await store.sync_schedule(every_hour(missed="all"), HOUR_MARK + 3)  # a new deploy
    (listed,) = await store.list_schedules()
    assert listed.paused and listed.fired == 1 and listed.last_fire_at == HOUR_MARK
    assert listed.definition["missed"] == "all"


async def test_a_queued_run_waits_for_the_previous_one_to_end(store: Store) -> None:
    defn = every_hour(overlap="queue")
    await store.sync_schedule(defn, HOUR_MARK - 10)
    await store.fire_schedule(defn, HOUR_MARK + 1)
    info = await registered(store)
    (first,) = await runs_of(store, info)  # running now
    waiting = await store.fire_schedule(defn, HOUR_MARK + 3601)
    assert waiting is not None and [r.state for r in waiting.runs] == ["waiting"]
    skipped = await store.fire_schedule(defn, HOUR_MARK + 7201)  # one waits already
    assert skipped is not None and skipped.runs == [] and skipped.skipped == 1
    assert await store.release_waiting(["inventory"]) == 0  # the first is still running
    assert await store.complete(info.id, [success(first.id)]) == []
    assert await store.release_waiting(["inventory"]) == 1
    (second,) = await runs_of(store, info)
    record = await store.get(second.id)
    assert record is not None and record.fire_at is not None
    assert record.fire_at.timestamp() == HOUR_MARK + 3600


async def test_firing_an_undeclared_schedule_says_so(store: Store) -> None:
    with pytest.raises(ScheduleNotFoundError, match="'ghost'"):
        await store.fire_schedule(every_hour("ghost"), NOW)
