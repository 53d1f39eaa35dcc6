"""Schedules fired by real nodes, on both stores, with a clock the test moves by hand."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from asyncjobs import App, JobContext, JobState, Settings
from asyncjobs.testing import ManualClock
from tests.helpers import wait_until

HOUR = 3600.0
T0 = 1_800_000_000.0 // HOUR * HOUR + 10  # ten seconds after an hour mark


def hourly_app(
    any_settings: Settings, shared_store: Any, clock: ManualClock, ran: list[Any], **options: Any
) -> App:
    app = App(settings=any_settings.replace(poll_interval_s=0.05), store=shared_store, clock=clock)

    @app.job()
    async def refresh(ctx: JobContext, site: str) -> str:
        ran.append(ctx.job_id)
        return site

    app.schedule("inventory", refresh, every=HOUR, args=["paris"], **options)
    return app


@pytest.fixture
def shared(make_app: Callable[..., App]) -> Any:
    """The store every app of a test shares (one MemoryStore, or the test's Postgres schema)."""
    return make_app()._store_override


async def fire_times_of(app: App, ids: list[Any]) -> list[float]:
    for job_id in ids:
        assert await app.result(job_id, timeout=10) == "paris"
    records = [await app.get(i) for i in ids]
    assert all(r.state is JobState.SUCCEEDED for r in records)
    return sorted(r.fire_at.timestamp() for r in records if r.fire_at is not None)


@pytest.mark.parametrize(
    ("policy", "expected_hours", "missed"),
    [("skip", [], 10), ("latest", [11], 9), ("all", [2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 0)],
)
async def test_after_an_outage_the_missed_fire_times_follow_the_policy(
    any_settings: Settings, shared: Any, policy: str, expected_hours: list[int], missed: int
) -> None:
    clock, ran = ManualClock(T0), []
    first = hourly_app(any_settings, shared, clock, ran, missed=policy)
    async with first:
        clock.set(clock.time() + HOUR)  # the first hour mark after declaration is due
        await wait_until(lambda: len(ran) == 1, what="the on-time run")
        await first.result(ran[0], timeout=10)
    on_time = list(ran)

    # Every node is down for ten fire times; the last of them is two minutes old when a node
    # comes back, so all ten were missed (late by more than the 60 s grace).
    clock.set(clock.time() + 10 * HOUR + 120)
    second = hourly_app(any_settings, shared, clock, ran, missed=policy)
    async with second:
        (record,) = await wait_until(
            lambda: _counted(second, 1 + len(expected_hours), missed), what="the catch-up"
        )
        await wait_until(lambda: len(ran) == 1 + len(expected_hours), what="the runs")
        caught_up = await fire_times_of(second, ran[len(on_time) :])
    base = T0 - 10  # the hour mark before T0
    assert caught_up == [base + h * HOUR for h in expected_hours]
    assert record.missed == missed and record.fired == 1 + len(expected_hours)


async def test_a_catch_up_is_bounded_by_max_catchup(any_settings: Settings, shared: Any) -> None:
    clock, ran = ManualClock(T0), []
    app = hourly_app(any_settings, shared, clock, ran, missed="all", max_catchup=3)
    async with app:
        await wait_until(app.store.list_schedules, what="the schedule to be declared")
        clock.set(clock.time() + 10 * HOUR + 120)  # ten fire times, all late
        await wait_until(lambda: _counted(app, 3, 7), what="the bounded catch-up")
        await wait_until(lambda: len(ran) == 3, what="three runs")


async def test_paused_schedules_do_not_fire(any_settings: Settings, shared: Any) -> None:
    clock, ran = ManualClock(T0), []
    app = hourly_app(any_settings, shared, clock, ran)
    async with app:
        await wait_until(app.store.list_schedules, what="the schedule to be declared")
        assert await app.store.pause_schedule("inventory", True, clock.time())
        clock.set(clock.time() + 3 * HOUR)
        await wait_until(
            lambda: _paused_and_idle(app), what="the scheduler to look at the paused schedule"
        )
        assert ran == []
        assert await app.store.pause_schedule("inventory", False, clock.time())
        clock.set(clock.time() + HOUR)
        await wait_until(lambda: len(ran) == 1, what="the first run after resuming")


async def _counted(app: App, fired: int, missed: int) -> Any:
    records = await app.store.list_schedules()
    if records and records[0].fired == fired and records[0].missed == missed:
        return records
    return None


async def _paused_and_idle(app: App) -> bool:
    (record,) = await app.store.list_schedules()
    return record.paused and record.fired == 0
