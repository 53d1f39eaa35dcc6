"""Recurring schedules: their declaration, their fire times, and what a node fires (DESIGN §8).

A schedule is declared in code (``app.schedule(...)``) and mirrored in the store. There is no
leader: every node computes the fire times that are due and asks the store to fire them; the
store holds the schedule's lock while it applies ``plan()``, so whichever node gets there first
fires a fire time, and the others find it handled.

- **Cron** expressions are evaluated by cronsim in the schedule's time zone, the way Debian's
  cron does it: a fire time in the hour skipped when clocks go forward runs right after the
  jump (unless the job runs at least hourly: that hour has no such minute); in the hour
  repeated when clocks go back, a job runs once, unless it runs at least hourly.
- **Intervals** (``every=timedelta(...)``) fire at whole multiples of the interval since the
  Unix epoch, in UTC, so every node agrees on them without talking to the others.
- **Missed** fire times (late by more than ``misfire_grace``, because no node was up) follow
  the schedule's policy: ``skip`` runs none of them; ``latest`` (default) runs the latest one,
  unless an on-time fire time is due anyway; ``all`` runs them all, up to the latest
  ``max_catchup``. They are counted either way.
- **Overlap**: when a previous run of the schedule has not finished, a new fire time is run
  anyway (``allow``, default), dropped (``skip``), or kept waiting until the previous run ends
  (``queue``; at most one run waits).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from .errors import ScheduleDefinitionError
from .storable import text_problem
from .store.rows import NewJob

MISSED_POLICIES = ("skip", "latest", "all")
OVERLAP_POLICIES = ("allow", "skip", "queue")
DEFAULT_MAX_CATCHUP = 100  # policy "all" runs at most this many missed fire times
DEFAULT_MISFIRE_GRACE_S = 60.0  # a fire time handled later than this was missed
COUNT_CAP = 10_000  # fire times looked at in one decision; a longer backlog is caught up over
#                     the next ticks, this many at a time, so no decision blocks the event loop
_US = 1_000_000


@dataclass(frozen=True)
class ScheduleDef:
    """A schedule as declared in code (``App.schedule``)."""

    name: str
    job: str
    cron: str | None
    every_s: float | None
    tz: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str | None
    priority: int | None
    missed: str
    max_catchup: int
    overlap: str
    misfire_grace_s: float
    template: NewJob  # what each run is: job name, queue, priority, encoded args, attempts
    _zone: ZoneInfo = field(repr=False, compare=False, default=ZoneInfo("UTC"))

    @property
    def spec(self) -> str:
        """A one-line description: ``cron 0 * * * * Europe/Paris`` or ``every 3600s``."""
        if self.cron is not None:
            return f"cron {self.cron} {self.tz}"
        return f"every {self.every_s:g}s"

    def definition(self) -> dict[str, Any]:
        """What the store keeps of the declaration, for display and for operators."""
        return {
            "cron": self.cron,
            "every_s": self.every_s,
            "tz": self.tz,
            "args": list(self.args),
            "kwargs": self.kwargs,
            "queue": self.queue,
            "priority": self.priority,
            "missed": self.missed,
            "max_catchup": self.max_catchup,
            "overlap": self.overlap,
            "misfire_grace_s": self.misfire_grace_s,
        }

    # -- fire times ------------------------------------------------------------------------------

    def fire_times(self, after: float) -> Iterator[float]:
        """Fire times strictly after ``after`` (epoch seconds), ascending, without end."""
        if self.every_s is not None:
            # Whole microseconds throughout: float products drift off the grid.
            step = round(self.every_s * _US)
            k = round(after * _US) // step + 1
            while True:
                yield k * step / _US
                k += 1
        else:
            assert self.cron is not None
            for when in CronSim(_for_cronsim(self.cron), datetime.fromtimestamp(after, self._zone)):
                yield when.timestamp()

    def latest_fire_times(self, until: float, n: int, after: float) -> list[float]:
        """The latest ``n`` fire times in ``(after, until]``, ascending."""
        out: list[float] = []
        if self.every_s is not None:
            step = round(self.every_s * _US)
            k, low = round(until * _US) // step, round(after * _US)
            while len(out) < n and k * step > low:
                out.append(k * step / _US)
                k -= 1
        else:
            assert self.cron is not None
            # cronsim in reverse yields times strictly before its start: start just after until.
            start = datetime.fromtimestamp(until, self._zone) + timedelta(microseconds=1)
            for when in CronSim(_for_cronsim(self.cron), start, reverse=True):
                ts = when.timestamp()
                if ts <= after or len(out) >= n:
                    break
                out.append(ts)
        out.reverse()
        return out

    def next_fire_after(self, now: float) -> float | None:
        return next(self.fire_times(now), None)


_DEGENERATE_RANGE = re.compile(r"\b(\d+)-\1/\d+\b")


def _for_cronsim(expr: str) -> str:
    """The expression with ranges of one value and a step ("0-0/1") written as that value.

    cronsim (2.8) reads any one-value term with a step as "from there to the end", which is
    right for "5/15" but not for "0-0/1": cron means {0} there. Found by the property test
    against a minute-by-minute reference (tests/unit/test_schedule_fire_times.py).
    """
    return _DEGENERATE_RANGE.sub(r"\1", expr)


class ScheduleState(NamedTuple):
    """What the store knows of a schedule when a node asks to fire it (under its lock)."""

    last_fire_at: float | None  # the latest fire time handled, run or not
    created_at: float  # first declared: fire times before it are not owed
    paused: bool
    unfinished: int  # runs of this schedule not finished (waiting, queued, running...)
    waiting: int  # runs kept waiting by the overlap policy "queue"


class Run(NamedTuple):
    fire_at: float
    state: str  # "queued", or "waiting" (overlap "queue")


class FirePlan(NamedTuple):
    """What firing a schedule does: runs to insert, and how its counters move."""

    runs: list[Run]
    last_fire_at: float
    next_fire_at: float | None
    missed: int
    skipped: int


def plan(defn: ScheduleDef, state: ScheduleState, now: float) -> FirePlan | None:
    """Decide what to fire at ``now``; None when nothing is due (or the schedule is paused).

    Pure: both stores call it while they hold the schedule's lock, so the decision is taken on
    the store's own state, whatever a racing node believed.
    """
    if state.paused:
        return None
    start = state.last_fire_at if state.last_fire_at is not None else state.created_at
    due: list[float] = []
    for t in defn.fire_times(start):
        if t > now or len(due) >= COUNT_CAP:
            break
        due.append(t)
    if not due:
        return None
    backlog_left = len(due) >= COUNT_CAP and due[-1] < now
    if backlog_left:
        # More are due than one decision looks at. Everything here is older than what follows:
        # missed, unless it is among the latest that the policy keeps, which come later.
        keep = defn.latest_fire_times(now, _kept(defn), due[-1])
        if keep:
            return FirePlan([], due[-1], keep[0], missed=len(due), skipped=0)
    grace = defn.misfire_grace_s
    late = [t for t in due if now - t > grace]
    on_time = [t for t in due if now - t <= grace]
    if defn.missed == "skip":
        wanted, missed = on_time, len(late)
    elif defn.missed == "latest":
        # One run for what was missed: the latest fire time. An on-time one supersedes it.
        if on_time:
            wanted, missed = on_time, len(late)
        else:
            wanted, missed = late[-1:], len(late) - 1
    else:  # "all"
        kept = late[-defn.max_catchup :] if defn.max_catchup else []
        wanted, missed = kept + on_time, len(late) - len(kept)
    runs, skipped = _apply_overlap(defn.overlap, wanted, state)
    return FirePlan(runs, due[-1], defn.next_fire_after(now), missed, skipped)


def _kept(defn: ScheduleDef) -> int:
    return defn.max_catchup if defn.missed == "all" else 1


def _apply_overlap(policy: str, wanted: list[float], state: ScheduleState) -> tuple[list[Run], int]:
    if policy == "allow" or not wanted:
        return [Run(t, "queued") for t in wanted], 0
    # "skip" and "queue": never two runs at once. Several due together (a catch-up) would run
    # over each other, so only the latest stands.
    latest, dropped = wanted[-1], len(wanted) - 1
    if state.unfinished == 0:
        return [Run(latest, "queued")], dropped
    if policy == "queue" and state.waiting == 0:
        return [Run(latest, "waiting")], dropped
    return [], dropped + 1


# -- declaration ---------------------------------------------------------------------------------


def make_schedule(
    name: str,
    job: str,
    *,
    cron: str | None,
    every: timedelta | float | None,
    tz: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    queue: str | None,
    priority: int | None,
    missed: str,
    max_catchup: int,
    overlap: str,
    misfire_grace: timedelta | float,
    template: NewJob,
) -> ScheduleDef:
    """Validate a declaration; every mistake gets a ScheduleDefinitionError naming it."""
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise ScheduleDefinitionError(
            str(name), "a schedule name is a string of 1 to 200 characters"
        )
    if why := text_problem(name):
        raise ScheduleDefinitionError(name, f"the name cannot be stored: {why}")
    if (cron is None) == (every is None):
        raise ScheduleDefinitionError(name, "give exactly one of cron=... or every=...")
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ScheduleDefinitionError(
            name,
            f"time zone {tz!r} is unknown: use an IANA name such as 'Europe/Paris' or 'UTC'",
        ) from None
    every_s: float | None = None
    if cron is not None:
        if not isinstance(cron, str):
            raise ScheduleDefinitionError(name, f"cron={cron!r} is not a string")
        try:
            next(CronSim(_for_cronsim(cron), datetime(2000, 1, 1, tzinfo=UTC)), None)
        except CronSimError as exc:
            raise ScheduleDefinitionError(
                name,
                f"cron expression {cron!r} is invalid ({exc}); the five fields are minute, "
                "hour, day of month, month, day of week, e.g. '0 * * * *' for every hour",
            ) from None
    else:
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise ScheduleDefinitionError(name, f"every={every!r} is not a timedelta or seconds")
        if not math.isfinite(seconds) or seconds < 0.001:
            raise ScheduleDefinitionError(
                name, f"every={every!r} must be a positive interval (at least a millisecond)"
            )
        every_s = float(seconds)
    if missed not in MISSED_POLICIES:
        raise ScheduleDefinitionError(
            name, f"missed={missed!r} is not one of {', '.join(MISSED_POLICIES)}"
        )
    if overlap not in OVERLAP_POLICIES:
        raise ScheduleDefinitionError(
            name, f"overlap={overlap!r} is not one of {', '.join(OVERLAP_POLICIES)}"
        )
    if (
        isinstance(max_catchup, bool)
        or not isinstance(max_catchup, int)
        or not (0 <= max_catchup <= COUNT_CAP)
    ):
        raise ScheduleDefinitionError(
            name, f"max_catchup={max_catchup!r} must be a whole number from 0 to {COUNT_CAP:,}"
        )
    grace = misfire_grace.total_seconds() if isinstance(misfire_grace, timedelta) else misfire_grace
    if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
        raise ScheduleDefinitionError(name, f"misfire_grace={misfire_grace!r} must be >= 0 seconds")
    return ScheduleDef(
        name, job, cron, every_s, tz, tuple(args), dict(kwargs), queue, priority, missed,
        max_catchup, overlap, float(grace), template, zone,
    )  # fmt: skip
