"""Fire times, checked against a brute-force reference that looks at every minute.

The properties hold where wall-clock time is unambiguous (UTC and fixed offsets): the fire
times are strictly increasing, each matches the expression, and none is skipped. Daylight-
saving transitions follow Debian's cron, as the README documents; the last tests pin that down.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs.ids import new_id
from asyncjobs.schedules import ScheduleDef, make_schedule
from asyncjobs.store.base import NewJob

TEMPLATE = NewJob(new_id(), "job", "default", 0, "queued", b"[[],{}]", 0.0, 1, None)
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()

# -- a tiny cron matcher, for the reference only ------------------------------------------------

FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def values(field: str, low: int, high: int) -> set[int]:
    out: set[int] = set()
    for part in field.split(","):
        rng, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if rng == "*":
            a, b = low, high
        elif "-" in rng:
            a, b = (int(x) for x in rng.split("-"))
        else:
            a = b = int(rng)
            if step_text:
                b = high  # "5/15" means 5, 20, 35, 50
        out.update(range(a, b + 1, step))
    return out


def matches(expr: str, wall: datetime) -> bool:
    _, _, dom, _, dow = expr.split()
    sets = [values(f, lo, hi) for f, (lo, hi) in zip(expr.split(), FIELDS, strict=True)]
    days = sets[4] | ({0} if 7 in sets[4] else set())
    weekday = (wall.weekday() + 1) % 7  # cron: 0 is Sunday
    dom_ok, dow_ok = wall.day in sets[2], weekday in days
    # Vixie cron: when both day fields are restricted (neither starts with *), either will do.
    day_ok = (
        (dom_ok or dow_ok)
        if not dom.startswith("*") and not dow.startswith("*")
        else (dom_ok and dow_ok)
    )
    return wall.minute in sets[0] and wall.hour in sets[1] and wall.month in sets[3] and day_ok


def field(low: int, high: int) -> st.SearchStrategy[str]:
    number = st.integers(low, high)
    single = st.one_of(
        st.just("*"),
        st.integers(1, max(1, (high - low) // 2)).map(lambda n: f"*/{n}"),
        number.map(str),
        st.tuples(number, number).map(lambda ab: f"{min(ab)}-{max(ab)}"),
        st.tuples(number, number, st.integers(1, 9)).map(
            lambda abn: f"{min(abn[:2])}-{max(abn[:2])}/{abn[2]}"
        ),
    )
    return st.lists(single, min_size=1, max_size=3).map(",".join)


def _cronsim_takes(expr: str) -> bool:
    # Some expressions can never fire ("* * 30 2 *", February 30th), and cronsim refuses
    # them, so declaring them raises ScheduleDefinitionError: leave those out here.
    try:
        CronSim(expr, datetime(2026, 1, 1))
    except CronSimError:
        return False
    return True


cron_exprs = st.tuples(*(field(lo, hi) for lo, hi in FIELDS)).map(" ".join).filter(_cronsim_takes)
zones = st.sampled_from(["UTC", "Etc/GMT-5", "Etc/GMT+3", "Asia/Kolkata"])  # no DST in these


def cron_schedule(expr: str, tz: str = "UTC") -> ScheduleDef:
    return make_schedule(
        "s", "job", cron=expr, every=None, tz=tz, args=(), kwargs={}, queue=None, priority=None,
        missed="latest", max_catchup=100, overlap="allow", misfire_grace=60, template=TEMPLATE,
    )  # fmt: skip


def interval_schedule(seconds: float) -> ScheduleDef:
    return make_schedule(
        "s", "job", cron=None, every=seconds, tz="UTC", args=(), kwargs={}, queue=None,
        priority=None, missed="latest", max_catchup=100, overlap="allow", misfire_grace=60,
        template=TEMPLATE,
    )  # fmt: skip


def fire_times_in(defn: ScheduleDef, after: float, until: float) -> list[float]:
    out = []
    for t in defn.fire_times(after):
        if t > until:
            return out
        out.append(t)
    return out


# -- properties --


@settings(max_examples=150, deadline=None)
@given(
    expr=cron_exprs,
    tz=zones,
    start_minute=st.integers(0, 60 * 24 * 365),
    span_minutes=st.integers(1, 3 * 24 * 60),
)
def test_cron_fire_times_are_every_matching_minute_and_only_those(
    expr: str, tz: str, start_minute: int, span_minutes: int
) -> None:
    defn = cron_schedule(expr, tz)
    zone = ZoneInfo(tz)
    after = T0 + start_minute * 60 + 17  # not on a minute: fire times are whole minutes
    until = after + span_minutes * 60
    got = fire_times_in(defn, after, until)
    first = (int(after) // 60 + 1) * 60
    expected = [
        float(t)
        for t in range(first, int(until) + 1, 60)
        if matches(expr, datetime.fromtimestamp(t, zone))
    ]
    assert got == expected  # none skipped, none extra
    assert all(b > a for a, b in itertools.pairwise(got))  # strictly increasing


@settings(max_examples=100, deadline=None)
@given(expr=cron_exprs, start_minute=st.integers(0, 60 * 24 * 365), n=st.integers(1, 5))
def test_the_latest_fire_times_are_the_end_of_the_forward_sequence(
    expr: str, start_minute: int, n: int
) -> None:
    defn = cron_schedule(expr)
    after = T0 + start_minute * 60
    until = after + 2 * 24 * 3600
    forward = fire_times_in(defn, after, until)
    assert defn.latest_fire_times(until, n, after) == forward[-n:]


@settings(max_examples=150, deadline=None)
@given(
    every=st.one_of(st.integers(1, 7200).map(float), st.floats(0.05, 100.0)),
    after=st.floats(0, 2e9),
    count=st.integers(1, 50),
)
def test_interval_fire_times_are_consecutive_multiples_of_the_interval(
    every: float, after: float, count: int
) -> None:
    defn = interval_schedule(every)
    it = defn.fire_times(after)
    got = [next(it) for _ in range(count)]
    step = round(every * 1_000_000)
    assert got[0] > after
    assert got[0] - step / 1_000_000 <= after + 1e-6  # the first after `after`: none skipped
    for a, b in itertools.pairwise(got):
        assert round((b - a) * 1_000_000) == step  # consecutive, strictly increasing
    assert all(round(t * 1_000_000) % step == 0 for t in got)  # on the grid every node shares
    assert defn.latest_fire_times(got[-1], count, after) == got


# -- daylight-saving transitions (Europe/Paris), as documented --


def paris(*args: int) -> float:
    return datetime(*args, tzinfo=ZoneInfo("Europe/Paris")).timestamp()


def wall(ts: float) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo("Europe/Paris")).strftime("%m-%d %H:%M%z")


def test_a_daily_job_in_the_skipped_hour_runs_right_after_the_clocks_go_forward() -> None:
    it = cron_schedule("30 2 * * *", "Europe/Paris").fire_times(paris(2025, 3, 29, 12, 0))
    assert [wall(next(it)) for _ in range(2)] == ["03-30 03:00+0200", "03-31 02:30+0200"]


def test_an_hourly_job_has_no_run_in_the_skipped_hour() -> None:
    it = cron_schedule("0 * * * *", "Europe/Paris").fire_times(paris(2025, 3, 30, 0, 30))
    assert [wall(next(it)) for _ in range(3)] == [
        "03-30 01:00+0100",
        "03-30 03:00+0200",
        "03-30 04:00+0200",
    ]


def test_a_daily_job_in_the_repeated_hour_runs_once_when_the_clocks_go_back() -> None:
    it = cron_schedule("30 2 * * *", "Europe/Paris").fire_times(paris(2025, 10, 25, 12, 0))
    assert [wall(next(it)) for _ in range(2)] == ["10-26 02:30+0200", "10-27 02:30+0100"]


def test_an_hourly_job_runs_in_both_repeated_hours() -> None:
    it = cron_schedule("0 * * * *", "Europe/Paris").fire_times(paris(2025, 10, 26, 1, 30))
    assert [wall(next(it)) for _ in range(3)] == [
        "10-26 02:00+0200",
        "10-26 02:00+0100",
        "10-26 03:00+0100",
    ]


def test_fire_times_increase_strictly_across_a_year_of_transitions() -> None:
    for expr in ("30 2 * * *", "0 * * * *", "*/20 1-3 * * *"):
        it = cron_schedule(expr, "America/New_York").fire_times(T0)
        times = [next(it) for _ in range(2000)]
        assert all(b > a for a, b in itertools.pairwise(times)), expr


def test_interval_schedules_ignore_time_zones() -> None:
    hourly = interval_schedule(3600.0)
    it = hourly.fire_times(paris(2025, 3, 30, 0, 30))
    times = [next(it) for _ in range(4)]
    assert [b - a for a, b in itertools.pairwise(times)] == [3600.0] * 3
    assert datetime.fromtimestamp(times[0], UTC).minute == 0  # on the hour, UTC
    assert timedelta(seconds=times[0] - paris(2025, 3, 30, 0, 30)) <= timedelta(hours=1)
