"""What a schedule fires, decided on the stored state: missed and overlap policies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from asyncjobs import App, MemoryStore, ScheduleDefinitionError, Settings
from asyncjobs.errors import PayloadEncodeError
from asyncjobs.ids import new_id
from asyncjobs.schedules import COUNT_CAP, Run, ScheduleState, make_schedule, plan
from asyncjobs.store.base import NewJob

TEMPLATE = NewJob(new_id(), "job", "default", 0, "queued", b"[[],{}]", 0.0, 1, None)
HOUR = 3600.0
T0 = 1_800_000_000.0 // HOUR * HOUR  # on the hour


def hourly(**options: Any) -> Any:
    defaults: dict[str, Any] = {
        "cron": None, "every": HOUR, "tz": "UTC", "args": (), "kwargs": {}, "queue": None,
        "priority": None, "missed": "latest", "max_catchup": 100, "overlap": "allow",
        "misfire_grace": 60.0, "template": TEMPLATE,
    }  # fmt: skip
    defaults.update(options)
    return make_schedule("inventory", "job", **defaults)


def state(last: float | None = T0, *, unfinished: int = 0, waiting: int = 0, paused: bool = False):  # type: ignore[no-untyped-def]
    return ScheduleState(last, T0 - 10 * HOUR, paused, unfinished, waiting)


def test_an_on_time_fire_time_runs_once() -> None:
    decision = plan(hourly(), state(), T0 + HOUR + 0.5)
    assert decision is not None
    assert decision.runs == [Run(T0 + HOUR, "queued")]
    assert (decision.last_fire_at, decision.next_fire_at) == (T0 + HOUR, T0 + 2 * HOUR)
    assert (decision.missed, decision.skipped) == (0, 0)


def test_nothing_is_due_before_the_next_fire_time() -> None:
    assert plan(hourly(), state(), T0 + HOUR - 1) is None


def test_a_paused_schedule_fires_nothing() -> None:
    assert plan(hourly(), state(paused=True), T0 + 5 * HOUR) is None


def test_a_new_schedule_starts_after_it_was_declared_not_at_the_epoch() -> None:
    decision = plan(hourly(), state(None), T0 + 0.5)
    assert decision is not None
    # Declared 10 h ago and never fired since: those fire times were missed (nobody was up).
    # Policy "latest" runs one: the on-time fire time supersedes the missed ones.
    assert [r.fire_at for r in decision.runs] == [T0]
    assert decision.missed == 9


@pytest.mark.parametrize(
    ("policy", "runs", "missed"),
    [
        ("skip", [], 10),
        ("latest", [T0 + 10 * HOUR], 9),
        ("all", [T0 + h * HOUR for h in range(1, 11)], 0),
    ],
)
def test_after_an_outage_missed_fire_times_follow_the_policy(
    policy: str, runs: list[float], missed: int
) -> None:
    now = T0 + 10 * HOUR + 300  # ten fire times passed while no node was up
    decision = plan(hourly(missed=policy), state(), now)
    assert decision is not None
    assert [r.fire_at for r in decision.runs] == runs
    assert decision.missed == missed
    assert decision.last_fire_at == T0 + 10 * HOUR  # handled either way: never again


def test_policy_all_catches_up_at_most_max_catchup() -> None:
    decision = plan(hourly(missed="all", max_catchup=3), state(), T0 + 10 * HOUR + 300)
    assert decision is not None
    assert [r.fire_at for r in decision.runs] == [T0 + h * HOUR for h in (8, 9, 10)]
    assert decision.missed == 7


def test_a_late_fire_time_within_the_grace_period_is_not_missed() -> None:
    decision = plan(hourly(missed="skip", misfire_grace=120), state(), T0 + HOUR + 90)
    assert decision is not None
    assert [r.fire_at for r in decision.runs] == [T0 + HOUR] and decision.missed == 0


@pytest.mark.parametrize(
    ("overlap", "unfinished", "waiting", "expected", "skipped"),
    [
        ("allow", 1, 0, [Run(T0 + HOUR, "queued")], 0),
        ("skip", 0, 0, [Run(T0 + HOUR, "queued")], 0),
        ("skip", 1, 0, [], 1),
        ("queue", 1, 0, [Run(T0 + HOUR, "waiting")], 0),
        ("queue", 2, 1, [], 1),  # one is waiting already: at most one waits
        ("queue", 0, 0, [Run(T0 + HOUR, "queued")], 0),
    ],
)
def test_overlap_with_an_unfinished_run_follows_the_policy(
    overlap: str, unfinished: int, waiting: int, expected: list[Run], skipped: int
) -> None:
    decision = plan(
        hourly(overlap=overlap), state(unfinished=unfinished, waiting=waiting), T0 + HOUR + 1
    )
    assert decision is not None
    assert decision.runs == expected and decision.skipped == skipped


def test_without_overlap_a_catch_up_runs_only_the_latest() -> None:
    decision = plan(hourly(missed="all", overlap="skip"), state(), T0 + 5 * HOUR + 300)
    assert decision is not None
    assert decision.runs == [Run(T0 + 5 * HOUR, "queued")] and decision.skipped == 4


def test_a_backlog_longer_than_one_decision_is_caught_up_over_several() -> None:
    every_second = hourly(every=1.0, missed="latest", misfire_grace=0)
    now = T0 + 3 * COUNT_CAP + 0.5
    current = state(T0)
    decisions = []
    while (decision := plan(every_second, current, now)) is not None:
        decisions.append(decision)
        current = current._replace(last_fire_at=decision.last_fire_at)
    assert len(decisions) > 1  # no single decision looked at the whole backlog
    assert [r.fire_at for d in decisions for r in d.runs] == [T0 + 3 * COUNT_CAP]
    assert sum(d.missed for d in decisions) == 3 * COUNT_CAP - 1
    assert decisions[-1].last_fire_at == T0 + 3 * COUNT_CAP


# -- declaration --


@pytest.fixture
def app() -> App:
    app = App(settings=Settings(dsn="memory://"), store=MemoryStore())

    @app.job()
    async def refresh(site: str) -> None:
        return None

    return app


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cron": "61 * * * *"}, r"cron expression '61 \* \* \* \*' is invalid"),
        ({"cron": "0 * * *"}, "is invalid"),
        ({"cron": "0 * * * *", "tz": "Mars/Olympus"}, "time zone 'Mars/Olympus' is unknown"),
        ({"every": timedelta(0)}, "must be a positive interval"),
        ({"every": -5}, "must be a positive interval"),
        ({"every": "hourly"}, "is not a timedelta or seconds"),
        ({}, "exactly one of cron"),
        ({"cron": "0 * * * *", "every": 60}, "exactly one of cron"),
        ({"every": 60, "missed": "some"}, "missed='some' is not one of skip, latest, all"),
        ({"every": 60, "overlap": "never"}, "overlap='never' is not one of allow, skip, queue"),
        ({"every": 60, "max_catchup": -1}, "max_catchup=-1"),
    ],
)
def test_bad_declarations_are_refused_naming_the_value(
    app: App, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ScheduleDefinitionError, match=message) as caught:
        app.schedule("inventory", "refresh", args=["paris"], **options)
    assert "'inventory'" in str(caught.value)
    assert app.schedules == {}


def test_a_schedule_for_an_unknown_job_is_refused(app: App) -> None:
    with pytest.raises(ScheduleDefinitionError, match="unknown job 'refesh'"):
        app.schedule("inventory", "refesh", every=60)


def test_arguments_that_do_not_encode_are_refused_at_declaration(app: App) -> None:
    with pytest.raises(PayloadEncodeError, match=r"args\[0\]"):
        app.schedule("inventory", "refresh", every=60, args=[{1, 2}])


def test_a_schedule_name_is_declared_once(app: App) -> None:
    app.schedule("inventory", "refresh", every=60, args=["a"])
    with pytest.raises(ScheduleDefinitionError, match="already declared"):
        app.schedule("inventory", "refresh", every=120, args=["b"])
