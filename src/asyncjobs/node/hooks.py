"""Lifecycle hooks: users' own code told when jobs start and end (``@app.on_event``).

A hook must never hold up the scheduler, whatever it does. So the node only appends an event
to the hook's own bounded queue (no await, no allocation beyond the event) and goes on; each
hook has its own task that calls it, one event at a time, under a time box
(``Settings.hook_timeout_s``). A slow hook falls behind on its own queue; when that queue is
full, new events for it are dropped and counted, never the jobs slowed. A hook that raises or
overruns is logged (at most once per ``LOG_EVERY_S`` per hook, with a count) and called again
for the next event. Hooks are ``async def``, like jobs, so the time box can cancel them; like
a job, a hook must not block the loop (call blocking code with ``anyio.to_thread.run_sync``).
"""

from __future__ import annotations

import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import anyio
import orjson

from ..jobs import JobId

log = logging.getLogger("asyncjobs.hooks")

# What a hook may listen to. job_finished comes for every end, job_failed and job_retrying
# as well, for those ends.
EVENT_KINDS = (
    "job_started",
    "job_finished",
    "job_failed",
    "job_retrying",
    "node_started",
    "node_stopping",
)
MAX_PENDING = 10_000  # events queued per hook; more are dropped (and counted)
LOG_EVERY_S = 10.0


class Event(NamedTuple):
    """What a hook receives. Job fields are None for node events."""

    kind: str
    node_id: JobId
    at: float  # epoch seconds
    job_id: JobId | None = None
    name: str | None = None
    queue: str | None = None
    attempt: int | None = None
    state: str | None = None  # how the attempt ended: succeeded, failed, cancelled, queued, ...
    error: dict[str, Any] | None = None  # {type, message, traceback} of a failed attempt
    reason: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None


Hook = Callable[[Event], Awaitable[None]]


class _Lane:
    """One hook: its queue of events, and the task that feeds them to it."""

    def __init__(self, fn: Hook, kinds: frozenset[str], timeout_s: float) -> None:
        self.fn = fn
        self.kinds = kinds
        self.timeout_s = timeout_s
        self.pending: deque[Event] = deque()
        self.wake = anyio.Event()
        self.idle = anyio.Event()  # set while nothing is queued or being delivered
        self.idle.set()
        self.dropped = 0
        self.failed = 0
        self.calls = 0
        self._unlogged = 0
        self._logged_at = 0.0
        self.label = getattr(fn, "__qualname__", repr(fn))

    def offer(self, event: Event) -> None:
        if len(self.pending) >= MAX_PENDING:
            self.dropped += 1
            self._complain(f"is {MAX_PENDING:,} events behind; dropping new ones")
            return
        self.pending.append(event)
        if self.idle.is_set():
            self.idle = anyio.Event()
        self.wake.set()

    async def run(self) -> None:
        """Deliver the events one at a time, in order, until cancelled."""
        while True:
            await self.wake.wait()
            self.wake = anyio.Event()
            while self.pending:
                await self._call(self.pending.popleft())
            self.idle.set()

    async def _call(self, event: Event) -> None:
        self.calls += 1
        try:
            with anyio.fail_after(self.timeout_s):
                await self.fn(event)
        except TimeoutError:
            self.failed += 1
            self._complain(f"took longer than {self.timeout_s:g} s (hook_timeout_s); abandoned")
        except (Exception, SystemExit) as exc:  # a hook never stops the node
            self.failed += 1
            self._complain(f"raised {type(exc).__name__}: {exc}", exc)

    def _complain(self, what: str, exc: BaseException | None = None) -> None:
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = (
            f" ({self._unlogged} more such problems since the last report)"
            if self._unlogged
            else ""
        )
        log.error("hook %s %s%s", self.label, what, more, exc_info=exc)
        self._logged_at, self._unlogged = now, 0


class Hooks:
    """The app's hooks, as one node runs them."""

    def __init__(
        self, hooks: list[tuple[frozenset[str], Hook]], timeout_s: float, node_id: JobId
    ) -> None:
        self.lanes = [_Lane(fn, kinds, timeout_s) for kinds, fn in hooks]
        self.node_id = node_id
        self.wants = frozenset().union(*(kinds for kinds, _ in hooks)) if hooks else frozenset()

    @property
    def dropped(self) -> int:
        """Events dropped, over every hook, because the hook fell behind."""
        return sum(lane.dropped for lane in self.lanes)

    def emit(self, event: Event) -> None:
        for lane in self.lanes:
            if event.kind in lane.kinds:
                lane.offer(event)

    def node_event(self, kind: str) -> None:
        if kind in self.wants:
            self.emit(Event(kind, self.node_id, time.time()))

    def job_started(self, job: Any) -> None:
        if "job_started" in self.wants:
            self.emit(
                Event("job_started", self.node_id, time.time(), job.id, job.name, job.queue,
                      job.attempt)
            )  # fmt: skip

    def job_finished(self, job: Any, outcome: Any) -> None:
        """``job`` a RunningJob, ``outcome`` its Outcome."""
        state = outcome.state
        kinds = ["job_finished"]
        if state == "failed":
            kinds.append("job_failed")
        elif state in ("queued", "scheduled") and outcome.error is not None:
            kinds.append("job_retrying")
        if not self.wants.intersection(kinds):
            return
        error = orjson.loads(outcome.error) if outcome.error is not None else None
        for kind in kinds:
            self.emit(
                Event(kind, self.node_id, outcome.finished_at, job.id, job.name, job.queue,
                      job.attempt, state, error, outcome.reason, outcome.wall_s, outcome.cpu_s)
            )  # fmt: skip

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for lane in self.lanes:
                tg.start_soon(lane.run)

    async def drain(self, deadline_s: float) -> None:
        """Wait, at most ``deadline_s``, until every hook has been given its queued events
        (each lane's own task delivers them: a hook is never called twice at once)."""
        with anyio.move_on_after(deadline_s):
            for lane in self.lanes:
                await lane.idle.wait()


def check_hook(kinds: tuple[str, ...], fn: Any) -> None:
    """Refuse, with a sentence, what cannot be a hook."""
    from ..errors import ConfigurationError

    if not kinds:
        raise ConfigurationError(
            "on_event", kinds, f"name one event or more: {', '.join(EVENT_KINDS)}"
        )
    for kind in kinds:
        if kind not in EVENT_KINDS:
            raise ConfigurationError(
                "on_event", kind, f"there is no such event; use one of {', '.join(EVENT_KINDS)}"
            )
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            "on_event",
            getattr(fn, "__qualname__", fn),
            "a hook must be an async def, so that it can be time-boxed without blocking the "
            "node; call blocking code from it with anyio.to_thread.run_sync",
        )
