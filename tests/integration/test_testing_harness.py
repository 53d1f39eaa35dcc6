"""asyncjobs.testing: the harness runs the real node code, on both stores, on a manual clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjobs import App, JobContext, Retry, Settings, chain, chord, group
from asyncjobs.testing import Harness, HarnessError, ManualClock
from tests import pool_jobs

START = datetime(2026, 3, 1, tzinfo=UTC)  # a Sunday, midnight: schedules line up on the hour


class Flaky(Exception):
    pass


def build_app() -> App:
    app = App(dsn="memory://")  # the harness replaces the store (and the DSN, for Postgres)

    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    @app.job()
    async def total(results: list[int]) -> int:
        return sum(results)

    @app.job(retry=Retry(attempts=4, backoff=10, jitter=0))
    async def flaky(ctx: JobContext) -> int:
        if ctx.attempt < 4:
            raise Flaky(f"attempt {ctx.attempt}")
        return ctx.attempt

    @app.job()
    async def boom() -> None:
        raise ValueError("the disk is read-only")

    @app.job()
    async def tick() -> None:
        return None

    @app.job()
    async def fan_out(ctx: JobContext, n: int) -> int:
        ids = [await ctx.enqueue("add", i, i) for i in range(n)]
        return sum([await ctx.wait_for(i) for i in ids])

    @app.job()
    async def forever() -> None:
        await asyncio.Event().wait()

    app.schedule("hourly", tick, cron="0 * * * *")
    return app


@pytest.fixture
async def harness(any_settings: Settings) -> AsyncIterator[Harness]:
    settings: dict[str, Any] = {}
    if any_settings.dsn != "memory://":
        settings = {"dsn": any_settings.dsn, "schema": any_settings.schema}
    async with Harness(build_app(), clock=ManualClock(START), **settings) as h:
        yield h


async def test_run_until_idle_runs_jobs_through_the_node_and_reports_them(
    harness: Harness,
) -> None:
    first = await harness.app.enqueue("add", 1, 2)
    second = await harness.app.enqueue("add", 40, 2)
    ran = await harness.run_until_idle()
    assert sorted((r.name, r.outcome, r.result) for r in ran) == [
        ("add", "succeeded", 3),
        ("add", "succeeded", 42),
    ]
    assert await harness.assert_succeeded(first) == 3
    assert await harness.assert_succeeded(second) == 42
    record = await harness.assert_enqueued("add", args=[40, 2])
    assert record.id == second
    assert await harness.run_until_idle() == []  # nothing left


async def test_workflows_run_to_the_end(harness: Harness) -> None:
    add, total = harness.app.registry["add"], harness.app.registry["total"]
    wid = await harness.app.submit(chain(chord(group(add.s(i, i) for i in range(4)), total.s())))
    await harness.run_until_idle()
    assert (await harness.app.workflow_status(wid)).state == "succeeded"
    assert await harness.app.workflow_result(wid, timeout=5) == 12


async def test_a_job_waiting_for_jobs_it_enqueued_gets_their_results(harness: Harness) -> None:
    job = await harness.app.enqueue("fan_out", 5)
    await harness.run_until_idle()
    assert await harness.assert_succeeded(job) == sum(2 * i for i in range(5))


async def test_retries_run_at_their_backoff_times_on_the_manual_clock(harness: Harness) -> None:
    job = await harness.app.enqueue("flaky")
    ran = await harness.run_until_idle()
    assert [(r.attempt, r.outcome) for r in ran] == [(1, "scheduled")]
    ran = await harness.advance(timedelta(minutes=5))
    # backoff 10 s, doubling: attempts 2, 3, 4 at +10 s, +30 s, +70 s
    assert [(r.attempt, r.outcome, (r.at - START).total_seconds()) for r in ran] == [
        (2, "scheduled", 10.0),
        (3, "scheduled", 30.0),
        (4, "succeeded", 70.0),
    ]
    assert await harness.assert_succeeded(job) == 4
    assert harness.clock.now() == START + timedelta(minutes=5)


async def test_an_hourly_schedule_fires_24_times_in_a_simulated_day(harness: Harness) -> None:
    ran = await harness.advance(timedelta(days=1))
    ticks = [r for r in ran if r.name == "tick"]
    assert len(ticks) == 24
    assert [r.at for r in ticks] == [START + timedelta(hours=h) for h in range(1, 25)]
    assert len(await harness.store.find_jobs("tick", 100)) == 24


async def test_assertion_failures_say_what_happened(harness: Harness) -> None:
    failed = await harness.app.enqueue("boom")
    pending = await harness.app.enqueue("add", 1, 1, delay=60)
    await harness.run_until_idle()
    with pytest.raises(AssertionError) as info:
        await harness.assert_succeeded(failed)
    message = str(info.value)
    assert "job 'boom'" in message and "is failed, not succeeded" in message
    assert "ValueError: the disk is read-only" in message and "Traceback" in message
    with pytest.raises(AssertionError, match=r"is scheduled, not succeeded.*run_until_idle"):
        await harness.assert_succeeded(pending)
    with pytest.raises(AssertionError) as info:
        await harness.assert_enqueued("add", args=[2, 2])
    assert "no enqueued 'add' job matches add(2, 2)" in str(info.value)
    assert "add(1, 1)  [scheduled]" in str(info.value)
    with pytest.raises(AssertionError, match=r"no job 'nope' was enqueued.*registered jobs: add"):
        await harness.assert_enqueued("nope")


async def test_a_job_that_never_ends_is_reported_not_waited_for_forever(
    harness: Harness,
) -> None:
    await harness.app.enqueue("forever")
    with pytest.raises(HarnessError, match=r"jobs still running after 0.2 s: forever"):
        await harness.run_until_idle(timeout=0.2)


async def test_the_clock_only_moves_forward() -> None:
    clock = ManualClock(START)
    with pytest.raises(HarnessError, match="only moves forward"):
        clock.set(START - timedelta(seconds=1))
    assert await clock.advance(30) == []  # no harness: it only moves
    assert clock.now() == START + timedelta(seconds=30)


@pytest.mark.parametrize("inline", [False, True], ids=["pool", "inline"])
async def test_isolated_jobs_run_in_the_pool_or_inline(inline: bool) -> None:
    app = pool_jobs.build_app(Settings(dsn="memory://"))
    async with Harness(app, clock=ManualClock(START), inline=inline) as h:
        doubled = await h.app.enqueue("async_double", 21)
        who = await h.app.enqueue("whoami", "t")
        await h.run_until_idle()
        assert await h.assert_succeeded(doubled) == 42
        seen = await h.assert_succeeded(who)
    assert seen["tag"] == "t" and seen["attempt"] == 1
    assert (seen["pid"] == os.getpid()) is inline  # inline runs in the test's own process
