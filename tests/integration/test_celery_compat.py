"""The Celery-shaped surface (asyncjobs.celery_compat) on a real app: tasks, delay and
apply_async, results and states, bound retries and autoretry (as coroutines and in the pool),
the canvas, beat entries, and the blocking calls from threads. Both stores where the pool is
not needed; the pool's tasks on Postgres."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from asyncjobs import (
    IsolationError,
    JobFailedError,
    JobState,
    PayloadError,
    Settings,
    UnknownJobError,
    WorkflowError,
)
from asyncjobs.celery_compat import (
    AsyncResult,
    Celery,
    CeleryOptionError,
    GroupResult,
    chain,
    chord,
    crontab,
    group,
    signature,
    states,
)
from tests import celery_tasks as t

pytestmark = pytest.mark.postgres
WAIT_S = 30.0


def point(app: Celery, settings: Settings) -> None:
    app.configure(**{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)})


@pytest.fixture
def tasks_app(any_settings: Settings) -> Iterator[Celery]:
    """The module-level app of tests.celery_tasks, on the store under test."""
    saved = t.app.settings
    point(t.app, any_settings.replace(queues="default,slow"))
    t.ATTEMPTS.clear()
    yield t.app
    point(t.app, saved)


@pytest.fixture
def pg_tasks_app(pg_settings: Settings) -> Iterator[Celery]:
    saved = t.app.settings
    point(t.app, pg_settings)
    yield t.app
    t.app.close()
    point(t.app, saved)


@pytest.fixture
async def running(tasks_app: Celery) -> AsyncIterator[Celery]:
    async with tasks_app:
        yield tasks_app


async def test_delay_and_apply_async_enqueue_and_the_handle_reads_the_result(
    running: Celery,
) -> None:
    result = await t.add.adelay(2, 3)
    assert isinstance(result, AsyncResult)
    assert await result.aget(timeout=WAIT_S) == 5
    assert await result.astate() == states.SUCCESS
    record = await running.get(result.id)
    assert record.name == "tests.celery_tasks.add"  # module.function, as Celery names tasks
    assert await (await t.add.aapply_async((1,), {"y": 4})).aget(timeout=WAIT_S) == 5


async def test_countdown_eta_queue_and_priority_reach_the_job(running: Celery) -> None:
    before = datetime.now(UTC)
    later = await t.add.aapply_async((1, 1), countdown=3600, queue="slow", priority=7)
    record = await running.get(later.id)
    assert record.state is JobState.SCHEDULED
    assert record.queue == "slow" and record.priority == 7
    assert record.run_at >= before + timedelta(seconds=3600)
    assert await later.astate() == states.PENDING
    eta = datetime.now(UTC) + timedelta(days=1)
    at = await t.add.aapply_async((1, 1), eta=eta)
    assert abs((await running.get(at.id)).run_at - eta) < timedelta(seconds=1)
    await later.arevoke()
    assert await later.astate() == states.REVOKED
    with pytest.raises(Exception, match="cancelled"):
        await later.aget(timeout=WAIT_S)


async def test_a_task_s_declared_options_map_onto_its_job(tasks_app: Celery) -> None:
    job = t.configured.job
    assert (job.queue, job.priority, job.timeout, job.soft_timeout) == ("slow", 5, 30, 20)
    assert job.limits is not None and not job.isolated
    assert t.mul.job.isolated  # plain def: the process pool
    assert t.flaky.job.max_attempts == 4  # max_retries=3 after the first attempt
    assert tasks_app.tasks["tests.xsum"] is t.xsum
    assert tasks_app.registry["tests.xsum"] is t.xsum.job


async def test_a_bound_task_retries_itself_with_self_retry(running: Celery) -> None:
    key = uuid.uuid4().hex
    result = await t.flaky.adelay(key, 2)
    value = await result.aget(timeout=WAIT_S)
    assert value == {"retries": 2, "id": str(result.id)}
    assert t.ATTEMPTS[key] == 3
    assert (await running.get(result.id)).attempt == 3


async def test_self_retry_with_no_retries_left_raises_the_exception_given(
    running: Celery,
) -> None:
    result = await t.flaky.adelay(uuid.uuid4().hex, 10)
    with pytest.raises(JobFailedError) as failed:
        await result.aget(timeout=WAIT_S)
    assert failed.value.error_type.endswith("Transient")
    assert "attempt 4" in str(failed.value)  # max_retries=3: four attempts in all
    assert await result.astate() == states.FAILURE
    error = await result.aget(timeout=WAIT_S, propagate=False)
    assert isinstance(error, JobFailedError)


async def test_autoretry_for_retries_the_listed_exceptions_only(running: Celery) -> None:
    listed = await t.always_transient.adelay()
    other = await t.fails_otherwise.adelay()
    with pytest.raises(JobFailedError, match="still down"):
        await listed.aget(timeout=WAIT_S)
    with pytest.raises(JobFailedError, match="KeyError"):
        await other.aget(timeout=WAIT_S)
    assert (await running.get(listed.id)).attempt == 3  # max_retries=2
    assert (await running.get(other.id)).attempt == 1


async def test_the_canvas_submits_workflows(running: Celery) -> None:
    assert await (await (t.add.s(1, 1) | t.add.s(10)).adelay()).aget(timeout=WAIT_S) == 12
    assert await (await chain(t.add.s(1, 1), t.add.si(5, 5)).adelay()).aget(timeout=WAIT_S) == 10
    members = await group(t.add.s(i, i) for i in range(4)).adelay()
    assert isinstance(members, GroupResult) and len(members) == 4
    assert await members.aget(timeout=WAIT_S) == [0, 2, 4, 6]
    total = await chord([t.add.s(i, 1) for i in range(3)], t.xsum.s()).adelay()
    assert await total.aget(timeout=WAIT_S) == 6
    delayed = signature(t.add, (2, 2), countdown=3600)
    pending = await delayed.adelay()
    assert (await running.get(pending.id)).state is JobState.SCHEDULED


async def test_a_task_called_directly_runs_here(tasks_app: Celery) -> None:
    assert await t.add(2, 2) == 4
    assert t.mul(3, 3) == 9


async def test_blocking_calls_from_a_thread_run_in_the_app_s_loop(running: Celery) -> None:
    def sync_code() -> tuple[int, str, bool]:
        result = t.add.delay(20, 22)
        value = result.get(timeout=WAIT_S)
        return value, result.state, result.ready()

    assert await asyncio.to_thread(sync_code) == (42, states.SUCCESS, True)
    chord_result = await asyncio.to_thread(
        lambda: chord(t.add.s(i, i) for i in range(3))(t.xsum.s()).get(timeout=WAIT_S)
    )
    assert chord_result == 6


async def test_in_the_apps_own_loop_delay_returns_at_once_and_get_is_awaited(
    running: Celery,
) -> None:
    result = t.add.delay(2, 3)  # no await: checked now, written in the background
    assert isinstance(result, AsyncResult)
    assert await result.get(timeout=WAIT_S) == 5
    assert await t.add.apply_async((4, 4), countdown=0.1).get(timeout=WAIT_S) == 8
    assert await (t.add.s(1, 1) | t.add.s(10)).delay().get(timeout=WAIT_S) == 12
    assert await group(t.add.s(i, i) for i in range(3)).delay().get(timeout=WAIT_S) == [0, 2, 4]
    assert await chord([t.add.s(i, 1) for i in range(3)])(t.xsum.s()).get(timeout=WAIT_S) == 6
    unawaited = t.add.delay(7, 7)
    await running.bridge.flush()  # what the app's stop does first
    assert (await running.get(unawaited.id)).name == t.add.name


async def test_in_the_apps_own_loop_bad_input_raises_at_delay_and_writes_nothing(
    running: Celery,
) -> None:
    before = await running.counts(finished=True)
    with pytest.raises(PayloadError, match="add"):
        t.add.delay(object(), 1)
    with pytest.raises(CeleryOptionError, match="link="):
        t.add.apply_async((1, 1), link=t.add.s(1))
    with pytest.raises(WorkflowError):
        (t.add.s(1, 1) | t.add.s(object())).delay()
    await running.bridge.flush()
    assert not running.bridge._writes
    assert await running.counts(finished=True) == before


async def test_a_blocking_call_in_another_event_loop_is_refused_with_the_awaitable_form(
    running: Celery,
) -> None:
    def in_a_loop_of_its_own() -> None:
        async def other_service() -> None:
            with pytest.raises(RuntimeError, match=r"await task\.adelay"):
                t.add.delay(1, 1)
            with pytest.raises(RuntimeError, match=r"await result\.aget"):
                AsyncResult(uuid.uuid4(), running).get()

        asyncio.run(other_service())

    await asyncio.to_thread(in_a_loop_of_its_own)
    with pytest.raises(RuntimeError, match=r"await result\.aget"):
        _ = AsyncResult(uuid.uuid4(), running).state  # a property cannot be awaited


def test_a_blocking_call_on_a_memory_app_that_is_not_running_is_refused(
    memory_settings: Settings,
) -> None:
    app = Celery("m", settings=memory_settings)

    @app.task(name="m.noop")
    async def noop() -> None:
        return None

    with pytest.raises(RuntimeError, match="in-memory"):
        noop.delay()


def test_blocking_calls_with_no_app_running_go_through_a_producer_twin(
    pg_tasks_app: Celery, pg_settings: Settings
) -> None:
    """A script, or a WSGI view: nothing runs an event loop. The calls store jobs that a
    node (here one started afterwards, in its own loop) runs, and read their results."""
    result = t.add.delay(2, 2)
    twice = (t.add.s(1, 2) | t.mul.s(10)).delay()
    assert result.state == states.PENDING

    async def serve() -> None:
        async with pg_tasks_app:
            await pg_tasks_app.result(twice.id, timeout=WAIT_S)

    asyncio.run(serve())
    assert result.get(timeout=WAIT_S) == 4
    assert (result.state, result.successful(), result.failed()) == (states.SUCCESS, True, False)
    assert twice.get(timeout=WAIT_S) == 30
    by_name = pg_tasks_app.send_task("tests.celery_tasks.add", (5, 5))
    assert by_name.state == states.PENDING
    with pytest.raises(UnknownJobError):
        pg_tasks_app.send_task("tests.nope", (1,))


async def test_plain_def_tasks_run_in_the_pool_and_retry_there(pg_tasks_app: Celery) -> None:
    async with pg_tasks_app:
        assert await (await t.mul.adelay(6, 7)).aget(timeout=WAIT_S) == 42
        retried = await t.flaky_in_pool.adelay(2)
        assert await retried.aget(timeout=WAIT_S) == 2
        nested = await t.enqueues_from_the_pool.adelay()
        with pytest.raises(JobFailedError) as failed:
            await nested.aget(timeout=WAIT_S)
    assert failed.value.error_type.endswith(IsolationError.__name__)
    assert "pool worker" in str(failed.value)


async def test_beat_schedule_entries_become_schedules_that_fire(any_settings: Settings) -> None:
    app = Celery("beat", settings=any_settings)

    @app.task(name="beat.tick")
    async def tick(n: int) -> int:
        return n

    app.conf.timezone = "Europe/Paris"
    app.conf.beat_schedule = {
        "nightly": {"task": "beat.tick", "schedule": crontab(minute=30, hour=2), "args": (1,)},
        "often": {"task": tick, "schedule": 1.0, "args": (2,), "options": {"queue": "default"}},
    }
    app.add_periodic_task(timedelta(hours=1), tick.s(3), name="hourly")
    nightly, often, hourly = (app.schedules[n] for n in ("nightly", "often", "hourly"))
    assert (nightly.cron, nightly.tz) == ("30 2 * * *", "Europe/Paris")
    assert (often.every_s, hourly.every_s) == (1.0, 3600.0)
    async with app:
        deadline = time.monotonic() + WAIT_S
        while not (await app.counts(finished=True)).get("succeeded"):
            assert time.monotonic() < deadline, "the beat entry never fired"
            await asyncio.sleep(0.05)
