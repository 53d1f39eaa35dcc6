"""The MemoryStore's records and shared state, and the state changes every area makes.

_Job, _Node, _Schedule and _Workflow stand for rows of the Postgres tables, and MemoryState's
dicts, heaps and sets for the tables and their indexes. The transitions that several areas
make (readying, scheduling, ending and settling a job, and the events they send) live here
too, so that each area's mixin inherits this one base and mypy sees all it touches.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from ...clock import to_datetime
from ...jobs import JobId, JobRecord
from ..base import (
    ACTIVE_STATES,
    EventHandler,
    NewJob,
    NodeInfo,
    StepWrite,
    StoreEvent,
    record_from_row,
    upstream_reason,
)

_ACTIVE = frozenset(ACTIVE_STATES)


@dataclass(slots=True)
class _Job:
    id: JobId
    name: str
    queue: str
    priority: int
    state: str
    args: bytes
    run_at: float
    max_attempts: int
    unique_key: str | None
    created_at: float
    attempt: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    node_id: JobId | None = None
    reason: str | None = None
    result: bytes | None = None
    error: bytes | None = None
    cancel_requested: bool = False
    schedule: str | None = None
    fire_at: float | None = None
    workflow_id: JobId | None = None
    step: str | None = None
    pending_deps: int = 0
    has_dependents: bool = False
    pass_results: str | None = None
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_key: str | None = None
    rate_count: int | None = None
    rate_period: float | None = None
    parked: bool = False  # queued, but out of the ready set until a slot of its key frees
    wall_s: float | None = None
    cpu_s: float | None = None
    awaited: bool = False  # a parked durable job waits for its end
    wake_on: JobId | None = None  # parked: the job whose end resumes it
    trace: str | None = None  # its enqueue span's context (asyncjobs.tracing)

    def limit_like(self, new: NewJob) -> _Job:
        """Take ``new``'s concurrency key and rate limit."""
        self.concurrency_key, self.concurrency_limit = new.concurrency_key, new.concurrency_limit
        self.rate_key, self.rate_count, self.rate_period = (
            new.rate_key,
            new.rate_count,
            new.rate_period,
        )
        return self


@dataclass(slots=True)
class _Workflow:
    id: JobId
    name: str | None
    created_at: float
    sinks: list[JobId]


@dataclass(slots=True)
class _Schedule:
    name: str
    job: str
    spec: str
    definition: dict[str, Any]
    created_at: float
    updated_at: float
    paused: bool = False
    fired: int = 0
    missed: int = 0
    skipped: int = 0
    last_fire_at: float | None = None
    next_fire_at: float | None = None
    fires: set[float] = field(default_factory=set)  # the (schedule, fire_at) unique key


@dataclass(slots=True)
class _Node:
    info: NodeInfo
    heartbeat_at: float
    running: int = 0
    workers: int = 0
    stopped_at: float | None = None
    reaped_at: float | None = None
    reaped_by: JobId | None = None
    started_at: float = field(default_factory=time.time)


@dataclass
class MemoryState:
    """The shared state of a MemoryStore: its "tables", and the transitions between states."""

    description: str = "memory (nothing persists)"
    jobs: dict[JobId, _Job] = field(default_factory=dict)
    nodes: dict[JobId, _Node] = field(default_factory=dict)
    _ready: dict[str, list[tuple[int, JobId]]] = field(default_factory=dict)
    _scheduled: list[tuple[float, JobId]] = field(default_factory=list)
    _unique: dict[str, JobId] = field(default_factory=dict)
    _handlers: list[EventHandler] = field(default_factory=list)
    _waiters: set[JobId] = field(default_factory=set)
    schedules: dict[str, _Schedule] = field(default_factory=dict)
    workflows: dict[JobId, _Workflow] = field(default_factory=dict)
    _rate_tat: dict[str, float] = field(default_factory=dict)  # rate buckets' next free time
    _parked: dict[str, set[JobId]] = field(default_factory=dict)  # queued, waiting for a slot
    _parents: dict[JobId, list[JobId]] = field(default_factory=dict)  # edges, by child
    _children: dict[JobId, list[JobId]] = field(default_factory=dict)  # edges, by parent
    # The nodes' statistics: (bucket, node, name, outcome) -> [attempts, wait_s, wall_s,
    # max_wall_s, timed, timed_wall_s, cpu_s], as in Postgres's job_stats table.
    _stats: dict[tuple[float, JobId, str, str], list[float]] = field(default_factory=dict)
    # The durable jobs' steps (job_steps): job -> seq -> (the record, attempt, node).
    _steps: dict[JobId, dict[int, tuple[StepWrite, int, JobId]]] = field(default_factory=dict)

    # -- internals -------------------------------------------------------------------------------

    def _emit(self, kind: str, value: str) -> None:
        if not self._handlers:
            return
        event = StoreEvent(kind, value)
        call_soon = _call_soon()
        for handler in list(self._handlers):
            call_soon(handler, event)

    def _make_ready(self, job: _Job) -> None:
        job.state = "queued"
        heapq.heappush(self._ready.setdefault(job.queue, []), (-job.priority, job.id))

    def _make_scheduled(self, job: _Job) -> None:
        job.state = "scheduled"
        heapq.heappush(self._scheduled, (job.run_at, job.id))

    def _wake(self, queues: Iterable[str], earliest: float | None = None) -> None:
        """Tell the nodes which queues gained ready jobs, once each, and when the earliest
        newly scheduled job is due (as the Postgres statements' NOTIFYs do)."""
        for queue in sorted(set(queues)):
            self._emit("queue", queue)
        if earliest is not None:
            self._emit("scheduled", repr(earliest))

    def _end(self, job: _Job, state: str, *, settle: bool = True) -> None:
        job.state = state
        if job.unique_key is not None and self._unique.get(job.unique_key) == job.id:
            del self._unique[job.unique_key]
        if job.id in self._waiters:
            self._waiters.discard(job.id)
            self._emit("finished", str(job.id))
        if settle and job.has_dependents:
            self._settle(job)
        if job.awaited:
            self._wake_parked(job.id)

    def _wake_parked(self, job_id: JobId) -> None:
        """Queue the durable jobs parked until ``job_id`` ended (wake_parked in Postgres)."""
        woken = [j for j in self.jobs.values() if j.wake_on == job_id and j.state == "waiting"]
        for job in woken:
            job.wake_on, job.run_at = None, time.time()
            self._make_ready(job)
        self._wake(j.queue for j in woken)

    def _settle(self, job: _Job) -> None:
        """What follows a job's end for its dependents (settle_jobs in Postgres): a success
        counts them down and readies those left with none; any other end cancels every
        transitive dependent."""
        children = self._children.get(job.id, ())
        now = time.time()
        if job.state == "succeeded":
            woken: set[str] = set()
            earliest: float | None = None
            for child_id in children:
                child = self.jobs.get(child_id)
                if child is None or child.state != "waiting":
                    continue
                child.pending_deps -= 1
                if child.pending_deps > 0:
                    continue
                if child.run_at > now:
                    self._make_scheduled(child)
                    earliest = child.run_at if earliest is None else min(earliest, child.run_at)
                else:
                    self._make_ready(child)
                    woken.add(child.queue)
            self._wake(woken, earliest)
            return
        reason = upstream_reason([job.state])
        stack = list(children)
        while stack:
            child = self.jobs.get(stack.pop())
            if child is None or child.state != "waiting":
                continue
            child.reason, child.finished_at = reason, now
            self._end(child, "cancelled", settle=False)
            stack.extend(self._children.get(child.id, ()))

    def _add_edges(self, child: JobId, parents: Sequence[JobId]) -> None:
        self._parents[child] = list(parents)
        for parent in parents:
            self._children.setdefault(parent, []).append(child)

    def _insert(self, job: _Job) -> tuple[str | None, float | None]:
        """Store a new job in its state; returns the queue it readied or when it is due."""
        self.jobs[job.id] = job
        if job.state == "queued":
            self._make_ready(job)
            return job.queue, None
        if job.state == "scheduled":
            self._make_scheduled(job)
            return None, job.run_at
        return None, None


def _call_soon() -> Any:
    import asyncio

    return asyncio.get_running_loop().call_soon


_COLUMNS = tuple(f.name for f in fields(_Job))
_TIMES = ("run_at", "created_at", "started_at", "finished_at", "fire_at")


def _record(job: _Job) -> JobRecord:
    """The job as Postgres would return it: the same columns, epoch times as datetimes."""
    row = {name: getattr(job, name) for name in _COLUMNS}
    for name in _TIMES:
        if row[name] is not None:
            row[name] = to_datetime(row[name])
    return record_from_row(row)
