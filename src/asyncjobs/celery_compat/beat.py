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
    celery.beat[name] = entry
    celery.schedule(
        name, task, cron=cron, every=every, tz=celery.timezone,
        args=tuple(entry.get("args") or ()), kwargs=dict(entry.get("kwargs") or {}),
        queue=options.get("queue"), priority=options.get("priority"),
    )  # fmt: skip


def redeclare(celery: Celery, name: str, entry: Mapping[str, Any]) -> None:
    """Declare a beat entry again (a new definition, or a new time zone), in place of the one
    of that name: only before the app starts, which is when schedules are read."""
    if celery._state == "started":
        raise CeleryOptionError(
            f"beat_schedule[{name!r}]", "beat_schedule",
            "schedules are read when the app starts; change them before, or restart the app",
        )  # fmt: skip
    undeclare(celery, name)
    declare(celery, name, entry)


def undeclare(celery: Celery, name: str) -> None:
    celery.beat.pop(name, None)
    celery.schedules.pop(name, None)


class BeatSchedule(dict[str, Any]):
    """``app.conf.beat_schedule``: assigning it replaces the entries declared before, and
    setting or deleting one of its keys declares or removes that entry, as Celery reads it."""

    def __init__(self, celery: Celery, entries: Mapping[str, Any]) -> None:
        super().__init__()
        self._celery = celery
        for name in [n for n in celery.beat if n not in entries]:
            self._check_not_started(name)
            undeclare(celery, name)
        for name, entry in entries.items():
            self[name] = entry

    def _check_not_started(self, name: str) -> None:
        if self._celery._state == "started":
            raise CeleryOptionError(
                f"beat_schedule[{name!r}]", "beat_schedule",
                "schedules are read when the app starts; change them before, or restart the "
                "app",
            )  # fmt: skip

    def __setitem__(self, name: str, entry: Any) -> None:
        redeclare(self._celery, name, entry)
        super().__setitem__(name, entry)

    def __delitem__(self, name: str) -> None:
        self._check_not_started(name)
        undeclare(self._celery, name)
        super().__delitem__(name)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for name, entry in dict(*args, **kwargs).items():
            self[name] = entry
