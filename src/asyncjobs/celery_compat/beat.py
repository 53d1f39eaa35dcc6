"""Celery beat's schedules as asyncjobs schedules: ``crontab(...)`` becomes a cron expression,
a number or ``timedelta`` an interval, and each ``beat_schedule`` entry (or
``add_periodic_task``) an ``app.schedule``. No beat process is needed: every node fires the
schedules, each fire time exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .options import CeleryOptionError

if TYPE_CHECKING:
    from .app import Celery

ENTRY_KNOWN = ("task", "schedule", "args", "kwargs", "options", "relative")
ENTRY_OPTIONS_KNOWN = ("queue", "priority")


class crontab:
    """A cron schedule: ``crontab(minute=0, hour="*/3", day_of_week="mon-fri")``. Fields take
    what cron takes; evaluated in the app's ``timezone`` (UTC unless set)."""

    def __init__(
        self,
        minute: str | int = "*",
        hour: str | int = "*",
        day_of_week: str | int = "*",
        day_of_month: str | int = "*",
        month_of_year: str | int = "*",
    ) -> None:
        self.fields = (minute, hour, day_of_month, month_of_year, day_of_week)

    @property
    def expression(self) -> str:
        """The five-field cron expression: minute, hour, day of month, month, day of week."""
        return " ".join(str(f) for f in self.fields)

    def __repr__(self) -> str:
        return f"<crontab: {self.expression}>"


def declare(celery: Celery, name: str, entry: Mapping[str, Any]) -> None:
    """Declare one ``beat_schedule`` entry as an asyncjobs schedule."""
    where = f"beat_schedule[{name!r}]"
    for key in entry:
        if key not in ENTRY_KNOWN:
            raise CeleryOptionError(where, key, f"a beat entry takes {', '.join(ENTRY_KNOWN)}")
    if entry.get("relative"):
        raise CeleryOptionError(
            where, "relative",
            "interval fire times are whole multiples of the interval since the Unix epoch, so "
            "every node agrees on them",
        )  # fmt: skip
    options = dict(entry.get("options") or {})
    for key in options:
        if key not in ENTRY_OPTIONS_KNOWN:
            raise CeleryOptionError(
                f"{where}['options']", key, "a scheduled run takes queue= and priority="
            )
    given = entry.get("task")
    task = given if isinstance(given, str) else getattr(given, "name", None)
    if not isinstance(task, str):
        raise CeleryOptionError(
            where, "task", f"{given!r} is neither a task's name nor a task (@app.task)"
        )
    schedule = entry.get("schedule")
    cron = every = None
    if isinstance(schedule, crontab):
        cron = schedule.expression
    elif isinstance(schedule, timedelta | int | float) and not isinstance(schedule, bool):
        every = schedule
    else:
        raise CeleryOptionError(
            where, "schedule",
            f"{schedule!r} is neither a crontab(...) nor a number of seconds or timedelta (solar "
            "and custom schedules have no counterpart)",
        )  # fmt: skip
    celery.schedule(
        name, task, cron=cron, every=every, tz=celery.timezone,
        args=tuple(entry.get("args") or ()), kwargs=dict(entry.get("kwargs") or {}),
        queue=options.get("queue"), priority=options.get("priority"),
    )  # fmt: skip
