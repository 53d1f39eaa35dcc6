"""MemoryStore: the Store protocol in process memory, for tests and quick starts.

Same semantics as PostgresStore (the conformance suite checks both): unique keys, fencing,
scheduled jobs, cancel requests, events. Nothing persists and nothing is shared between
processes, so it suits one process only. Events are delivered on the next loop iteration, as a
NOTIFY would be, never from inside the call that caused them.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import anyio
import anyio.lowlevel
import orjson

from ..clock import to_datetime
from ..errors import DependencyNotFoundError, ScheduleNotFoundError
from ..ids import new_ids
from ..jobs import JobId, JobRecord, JobState
from ..schedules import FirePlan, ScheduleDef, ScheduleState, plan
from ..serialization import decode_args
from .base import (
    ACTIVE_STATES,
    MAX_INPUT_BYTES,
    PENDING_STATES,
    PURGEABLE_STATES,
    RATE_HORIZON_S,
    STATS_BUCKET_S,
    TERMINAL_STATES,
    BusyKey,
    ClaimedJob,
    EventHandler,
    HeartbeatResult,
    JobQuery,
    JobStats,
    NewJob,
    NewWorkflow,
    NodeInfo,
    NodeStatus,
    Outcome,
    ParentResult,
    PromoteResult,
    QueueCounts,
    RateBucket,
    ReapedNode,
    ScheduleRecord,
    StatsRow,
    StepFailure,
    StoreEvent,
    Throughput,
    WorkflowInfo,
    add_stats,
    record_from_row,
    stats_bucket,
    upstream_reason,
)
from .refusals import check_jobs, check_outcomes, check_stats, check_text

_ACTIVE = frozenset(ACTIVE_STATES)


class _Gate:
    """Admits claims within concurrency keys and rate limits (claim_jobs in Postgres)."""

    def __init__(
        self, jobs: Iterable[_Job], tat: dict[str, float], now: float, freeing: frozenset[str]
    ) -> None:
        self.freeing = freeing
        self.running = Counter(
            j.concurrency_key for j in jobs if j.state == "running" and j.concurrency_key
        )
        self.tat = tat
        self.now = now
        self.booked: Counter[str] = Counter()  # turned away this claim, per bucket

    def admit(self, job: _Job) -> tuple[str, float]:
        """("claim", seconds until its booked start), ("park", 0) when its key is full, or
        ("later", seconds until its start) when its bucket is booked beyond the horizon."""
        key, bucket = job.concurrency_key, job.rate_key
        if key is not None and self.running[key] >= (job.concurrency_limit or 1):
            return ("skip" if key in self.freeing else "park"), 0.0
        delay = 0.0
        spacing = (job.rate_period or 0.0) / (job.rate_count or 1)
        if bucket is not None:
            slot = max(self.tat.get(bucket, self.now), self.now) + self.booked[bucket] * spacing
            delay = slot - self.now
            if delay > RATE_HORIZON_S:
                self.booked[bucket] += 1  # the next one waits a spacing longer
                return "later", delay
            self.tat[bucket] = slot + spacing
        if key is not None:
            self.running[key] += 1
        return "claim", delay


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
class MemoryStore:
    """Jobs in a dict. ``MemoryStore()`` needs no setup; ``migrate`` is a no-op."""

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

    async def open(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def close(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def migrate(self) -> list[str]:
        await anyio.lowlevel.checkpoint()
        return []

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

    def _claim_args(self, job: _Job) -> bytes | None:
        """The job's arguments, with its parents' results first if it takes them."""
        if job.pass_results is None:
            return job.args
        results = []
        raw: list[bytes] = []
        for parent_id in self._parents.get(job.id, ()):
            parent = self.jobs.get(parent_id)
            data = parent.result if parent is not None else None
            raw.append(data or b"null")
            results.append(None if data is None else orjson.loads(data))
        if sum(len(parent_json) for parent_json in raw) > MAX_INPUT_BYTES:
            return None  # the node fails the step, as with Postgres
        first = (results[0] if results else None) if job.pass_results == "one" else results
        args, kwargs = decode_args(job.args)
        return orjson.dumps([[first, *args], kwargs])

    # -- producers -------------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        check_jobs(jobs)
        now = time.time()
        out: list[JobId] = []
        woken: set[str] = set()
        earliest: float | None = None
        for new in jobs:
            if new.id in self.jobs:
                out.append(new.id)
                continue
            if new.unique_key is not None and new.unique_key in self._unique:
                out.append(self._unique[new.unique_key])
                continue
            job = _Job(
                new.id,
                new.name,
                new.queue,
                new.priority,
                new.state,
                new.args,
                new.run_at,
                new.max_attempts,
                new.unique_key,
                now,
            ).limit_like(new)
            self.jobs[job.id] = job
            if job.unique_key is not None:
                self._unique[job.unique_key] = job.id
            if job.state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            else:
                self._make_scheduled(job)
                earliest = job.run_at if earliest is None else min(earliest, job.run_at)
            out.append(job.id)
        self._wake(woken, earliest)
        return out

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        batch = list(jobs)  # an exception while preparing leaves nothing written
        await self.enqueue(batch)

    async def get(self, job_id: JobId) -> JobRecord | None:
        await anyio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        return None if job is None else _record(job)

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        await anyio.lowlevel.checkpoint()
        check_text((reason,))
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state in PENDING_STATES:
            job.reason = reason
            job.finished_at = now
            job.cancel_requested = False
            self._end(job, "cancelled")
        elif job.state == "running":
            job.reason = reason
            job.cancel_requested = True
            self._emit("cancel", str(job.id))
        return JobState(job.state)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        check_text((query.queue, query.name))
        found = [
            j
            for j in sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
            if (query.state is None or j.state == query.state)
            and (query.queue is None or j.queue == query.queue)
            and (query.name is None or j.name == query.name)
            and (query.since is None or j.id >= query.since)
            and (query.before is None or j.id < query.before)
        ]
        return [_record(j) for j in found[: query.limit]]

    async def retry_jobs(self, job_ids: Sequence[JobId], now: float) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        again: list[JobId] = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.state not in ("failed", "lost"):
                continue
            if job.unique_key is not None:
                if job.unique_key in self._unique:
                    continue  # another unfinished job holds its unique key
                self._unique[job.unique_key] = job.id
            job.run_at, job.finished_at, job.error, job.result = now, None, None, None
            job.reason, job.parked = "retried by request", False
            job.max_attempts = max(job.max_attempts, job.attempt + 1)
            self._make_ready(job)
            again.append(job_id)
        self._wake(self.jobs[i].queue for i in again)
        return again

    async def find_jobs(self, name: str, limit: int) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        check_text((name,))
        found = sorted((j for j in self.jobs.values() if j.name == name), key=lambda j: j.id)
        return [_record(j) for j in found[:limit]]

    async def watch(self, job_id: JobId) -> JobRecord | None:
        await anyio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        record = _record(job)
        if job.state in _ACTIVE:
            self._waiters.add(job.id)
        return record

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(self, node: NodeInfo) -> None:
        await anyio.lowlevel.checkpoint()
        check_text((node.host, node.version, *node.queues))
        self.nodes[node.id] = _Node(node, time.time())

    async def heartbeat(
        self, node_id: JobId, running: int, workers: int = 0, stats: Sequence[StatsRow] = ()
    ) -> HeartbeatResult:
        await anyio.lowlevel.checkpoint()
        check_stats(stats)
        for r in stats:  # the node's statistics, written even if it was reaped
            add_stats(self._stats.setdefault((r.bucket, node_id, r.name, r.outcome), [0] * 7), r)
        node = self.nodes.get(node_id)
        if node is None or node.reaped_at is not None:
            return HeartbeatResult(False, [])
        node.heartbeat_at = time.time()
        node.running = running
        node.workers = workers
        cancels = [
            j.id
            for j in self.jobs.values()
            if j.node_id == node_id and j.state == "running" and j.cancel_requested
        ]
        return HeartbeatResult(True, cancels)

    async def deregister_node(self, node_id: JobId) -> None:
        await anyio.lowlevel.checkpoint()
        node = self.nodes.get(node_id)
        if node is not None:
            node.stopped_at = time.time()
            node.running = 0

    async def reap(self, reaper_id: JobId, node_timeout_s: float, limit: int) -> list[ReapedNode]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        dead = sorted(
            (
                n
                for n in self.nodes.values()
                if n.reaped_at is None
                and n.info.id != reaper_id  # a node running this is alive: never itself
                and (n.heartbeat_at < now - node_timeout_s or n.stopped_at is not None)
            ),
            key=lambda n: n.heartbeat_at,
        )[:limit]
        out: list[ReapedNode] = []
        woken: set[str] = set()
        freed: list[str] = []
        for node in dead:
            node.reaped_at, node.reaped_by, node.running = now, reaper_id, 0
            stamp = to_datetime(node.heartbeat_at)
            reason = (
                f"node {node.info.id} stopped heartbeating at "
                f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.')}{stamp.microsecond // 1000:03d}Z"
            )
            counts = {"queued": 0, "lost": 0, "cancelled": 0}
            for job in self.jobs.values():
                if job.node_id != node.info.id or job.state != "running":
                    continue
                if job.cancel_requested:
                    job.finished_at = now
                    self._end(job, "cancelled")
                elif job.attempt < job.max_attempts:
                    job.reason, job.run_at, job.finished_at = reason, now, None
                    self._make_ready(job)
                    woken.add(job.queue)
                else:
                    job.reason, job.finished_at = reason, now
                    self._end(job, "lost")
                if job.concurrency_key is not None:
                    freed.append(job.concurrency_key)  # the slot it held is free
                counts[job.state] += 1
            requeued, lost, cancelled = counts["queued"], counts["lost"], counts["cancelled"]
            out.append(ReapedNode(node.info.id, node.heartbeat_at, requeued, lost, cancelled))
        self._wake(woken)
        self._unpark(freed)
        return out

    async def prune(self, retention_s: float, limit: int) -> int:
        await anyio.lowlevel.checkpoint()
        cutoff = time.time() - retention_s
        old = [
            job.id
            for job in self.jobs.values()
            if job.state in TERMINAL_STATES
            and job.finished_at is not None
            and job.finished_at < cutoff
        ][:limit]
        for job_id in old:
            del self.jobs[job_id]
            self._waiters.discard(job_id)
            self._parents.pop(job_id, None)  # a finished job never needs its edges again
            self._children.pop(job_id, None)
        return len(old)

    async def prune_rest(self, retention_s: float, waiter_ttl_s: float) -> None:
        await anyio.lowlevel.checkpoint()
        cutoff = time.time() - retention_s
        for node_id, node in list(self.nodes.items()):
            ended = node.reaped_at if node.reaped_at is not None else node.stopped_at
            if ended is not None and ended < cutoff:
                del self.nodes[node_id]
        for key in [k for k in self._stats if k[0] < cutoff]:
            del self._stats[key]
        in_use = {j.workflow_id for j in self.jobs.values()}
        for workflow_id, workflow in list(self.workflows.items()):
            if workflow.created_at < cutoff and workflow_id not in in_use:
                del self.workflows[workflow_id]

    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        await anyio.lowlevel.checkpoint()
        out: list[ClaimedJob] = []
        node = self.nodes.get(node_id)
        if node is not None and node.reaped_at is not None:
            return out  # a reaped node claims nothing
        gate = _Gate(self.jobs.values(), self._rate_tat, time.time(), frozenset(freeing))
        later: list[float] = []
        skipped: list[tuple[int, JobId]] = []
        for queue, limit in limits.items():
            heap = self._ready.get(queue)
            taken = 0
            while heap and taken < limit:
                entry = heapq.heappop(heap)
                job = self.jobs.get(entry[1])
                if job is None or job.state != "queued" or job.queue != queue:
                    continue  # a stale heap entry (cancelled, or re-queued and pushed again)
                verdict, delay = gate.admit(job)
                if verdict == "skip":  # its key frees as soon as the node records an outcome
                    skipped.append(entry)
                    continue
                if verdict == "park":  # out of the ready set until a slot of its key frees
                    job.parked = True
                    self._parked.setdefault(job.concurrency_key or "", set()).add(job.id)
                    continue
                if verdict == "later":  # back when its start falls within the horizon
                    job.run_at = now + delay - RATE_HORIZON_S / 2
                    self._make_scheduled(job)
                    later.append(job.run_at)
                    continue
                job.state = "running"
                job.attempt += 1
                job.node_id = node_id
                job.started_at = now
                job.cancel_requested = False
                out.append(
                    ClaimedJob(
                        job.id,
                        job.name,
                        job.queue,
                        job.attempt,
                        job.max_attempts,
                        self._claim_args(job),
                        job.workflow_id,
                        delay,
                        job.concurrency_key,
                        max(0.0, now - job.run_at),
                    )
                )
                taken += 1
            for entry in skipped:
                heapq.heappush(self._ready[queue], entry)
            skipped.clear()
        if later:
            self._wake((), min(later))
        return out

    def _unpark(self, keys: Iterable[str]) -> None:
        """Slots of these keys were freed: unpark as many of their parked jobs as fit, best
        first (unpark in Postgres)."""
        woken: list[str] = []
        for key in set(keys):
            parked = self._parked.get(key)
            if not parked:
                continue
            running = sum(
                1 for j in self.jobs.values() if j.state == "running" and j.concurrency_key == key
            )
            waiting = sorted(
                (self.jobs[i] for i in parked if i in self.jobs),
                key=lambda j: (-j.priority, j.id),
            )
            rank = 0
            for job in waiting:
                if job.state != "queued" or not job.parked:
                    parked.discard(job.id)  # cancelled (or otherwise gone) while parked
                    continue
                rank += 1
                if running + rank > (job.concurrency_limit or 1):
                    break
                parked.discard(job.id)
                job.parked = False
                self._make_ready(job)
                woken.append(job.queue)
        self._wake(woken)

    async def release_claims(self, node_id: JobId, keep: Sequence[JobId]) -> int:
        await anyio.lowlevel.checkpoint()
        kept = set(keep)
        released = [
            j
            for j in self.jobs.values()
            if j.node_id == node_id and j.state == "running" and j.id not in kept
        ]
        for job in released:
            job.attempt -= 1
            job.node_id = job.started_at = None
            self._make_ready(job)
        self._wake(j.queue for j in released)
        self._unpark(j.concurrency_key for j in released if j.concurrency_key is not None)
        return len(released)

    async def complete(self, node_id: JobId, outcomes: Sequence[Outcome]) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        check_outcomes(outcomes)  # before anything changes: Postgres fails the whole statement
        rejected: list[JobId] = []
        woken: set[str] = set()
        freed: list[str] = []
        earliest: float | None = None
        for o in outcomes:
            job = self.jobs.get(o.id)
            if (
                job is None
                or job.state != "running"
                or job.attempt != o.attempt
                or job.node_id != node_id
            ):
                rejected.append(o.id)
                continue
            state = o.state
            if state in ("queued", "scheduled"):
                if job.cancel_requested:
                    state = "cancelled"  # someone asked to cancel it: never run it again
                elif job.attempt >= job.max_attempts:
                    state = "failed"  # no attempts left: a retry would run it once too often
            job.result = o.result
            job.error = o.error
            job.wall_s, job.cpu_s = o.wall_s, o.cpu_s
            if state != "cancelled" or (o.state == "cancelled" and o.reason is not None):
                job.reason = o.reason  # a cancel without its own reason keeps the requester's
            job.finished_at = o.finished_at if state in TERMINAL_STATES else None
            if o.run_at is not None and state in ("queued", "scheduled"):
                job.run_at = o.run_at
            if state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            elif state == "scheduled":
                self._make_scheduled(job)
                earliest = job.run_at if earliest is None else min(earliest, job.run_at)
            elif state in TERMINAL_STATES:
                self._end(job, state)
            else:
                raise ValueError(f"an outcome cannot move a job to {o.state!r}")
            if job.concurrency_key is not None:
                freed.append(job.concurrency_key)
                woken.add(job.queue)  # jobs left ready while the key was freeing can go
        self._wake(woken, earliest)
        self._unpark(freed)  # the slots of finished keyed jobs, to the jobs parked for them
        return rejected

    async def throughput(self, now: float, window_s: float) -> Throughput:
        await anyio.lowlevel.checkpoint()
        since = stats_bucket(now - window_s)
        finished: dict[str, int] = {}
        for (bucket, _, _, outcome), row in self._stats.items():
            if bucket >= since:
                finished[outcome] = finished.get(outcome, 0) + int(row[0])
        return Throughput(max(now - since, STATS_BUCKET_S), finished)

    async def job_stats(self, since: float) -> list[JobStats]:
        await anyio.lowlevel.checkpoint()
        start = stats_bucket(since)
        sums: dict[str, list[float]] = {}
        for (bucket, _, name, outcome), row in self._stats.items():
            if bucket < start:
                continue
            acc = sums.setdefault(name, [0, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0])
            acc[0] += row[0]
            acc[1] += row[0] if outcome in ("failed", "retried") else 0
            acc[2] += row[1]
            acc[3] += row[2]
            acc[4] += row[6]
            acc[5] += row[4]
            acc[6] += row[5]
            acc[7] = max(acc[7], row[3])
        ranked = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [
            JobStats(name, int(a[0]), int(a[1]), a[2], a[3], a[4], int(a[5]), a[6], a[7])
            for name, a in ranked
        ]

    async def list_workflows(self, before: JobId | None, limit: int) -> list[WorkflowInfo]:
        await anyio.lowlevel.checkpoint()
        ids = sorted((w for w in self.workflows if before is None or w < before), reverse=True)
        counts: dict[JobId, dict[str, int]] = {w: {} for w in ids[:limit]}
        for job in self.jobs.values():
            if job.workflow_id in counts:
                by_state = counts[job.workflow_id]
                by_state[job.state] = by_state.get(job.state, 0) + 1
        return [
            WorkflowInfo(w, self.workflows[w].name, self.workflows[w].created_at,
                         list(self.workflows[w].sinks), counts[w])
            for w in ids[:limit]
        ]  # fmt: skip

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        await anyio.lowlevel.checkpoint()
        moved = 0
        woken: set[str] = set()
        heap = self._scheduled
        while heap and heap[0][0] <= now and moved < limit:
            run_at, job_id = heapq.heappop(heap)
            if not self._is_scheduled_at(job_id, run_at):
                continue  # a stale heap entry
            job = self.jobs[job_id]
            self._make_ready(job)
            woken.add(job.queue)
            moved += 1
        self._wake(woken)
        # Like Postgres: the earliest scheduled job due after `now` (when the limit left due
        # jobs behind, those are not it; the caller sees moved == limit and calls again).
        next_run_at = min(
            (
                run_at
                for run_at, job_id in heap
                if run_at > now and self._is_scheduled_at(job_id, run_at)
            ),
            default=None,
        )
        return PromoteResult(moved, next_run_at)

    def _is_scheduled_at(self, job_id: JobId, run_at: float) -> bool:
        job = self.jobs.get(job_id)
        return job is not None and job.state == "scheduled" and job.run_at == run_at

    # -- schedules -------------------------------------------------------------------------------

    async def sync_schedule(self, defn: ScheduleDef, now: float) -> None:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(defn.name)
        if record is None:
            record = self.schedules[defn.name] = _Schedule(
                defn.name, defn.job, defn.spec, defn.definition(), now, time.time()
            )
        else:
            record.job, record.spec = defn.job, defn.spec
            record.definition, record.updated_at = defn.definition(), time.time()
        record.next_fire_at = defn.next_fire_after(now)

    async def fire_schedule(self, defn: ScheduleDef, now: float) -> FirePlan | None:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(defn.name)
        if record is None:
            raise ScheduleNotFoundError(defn.name)
        runs_of = [j for j in self.jobs.values() if j.schedule == defn.name]
        state = ScheduleState(
            record.last_fire_at,
            record.created_at,
            record.paused,
            sum(j.state in _ACTIVE for j in runs_of),
            sum(j.state == "waiting" for j in runs_of),
        )
        decision = plan(defn, state, now)
        if decision is None:
            return None
        t = defn.template
        inserted = 0
        woken: set[str] = set()
        for run, job_id in zip(decision.runs, new_ids(len(decision.runs)), strict=True):
            if run.fire_at in record.fires:
                continue
            record.fires.add(run.fire_at)
            job = _Job(
                job_id, t.name, t.queue, t.priority, run.state, t.args, run.fire_at,
                t.max_attempts, None, time.time(), schedule=defn.name, fire_at=run.fire_at,
            ).limit_like(t)  # fmt: skip
            self.jobs[job_id] = job
            if run.state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            inserted += 1
        self._wake(woken)
        record.last_fire_at = decision.last_fire_at
        record.next_fire_at = decision.next_fire_at
        record.fired += inserted
        record.missed += decision.missed
        record.skipped += decision.skipped
        record.updated_at = time.time()
        return decision

    async def release_waiting(self, names: Sequence[str]) -> int:
        await anyio.lowlevel.checkpoint()
        woken: list[str] = []
        for name in names:
            runs_of = [j for j in self.jobs.values() if j.schedule == name]
            if any(j.state in ("scheduled", "queued", "running") for j in runs_of):
                continue
            for job in runs_of:
                if job.state == "waiting":
                    self._make_ready(job)
                    woken.append(job.queue)
        self._wake(woken)
        return len(woken)

    async def list_schedules(self) -> list[ScheduleRecord]:
        await anyio.lowlevel.checkpoint()
        return [
            ScheduleRecord(*(getattr(r, name) for name in ScheduleRecord._fields))
            for r in sorted(self.schedules.values(), key=lambda r: r.name)
        ]

    async def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(name)
        if record is None:
            return False
        record.paused = paused
        if not paused:
            last = record.last_fire_at
            record.last_fire_at = now if last is None else max(last, now)
        record.updated_at = time.time()
        return True

    # -- workflows and dependencies -------------------------------------------------------------

    async def submit_workflow(self, workflow: NewWorkflow) -> None:
        await anyio.lowlevel.checkpoint()
        check_text((workflow.name, *(w.step for w in workflow.jobs)))
        check_jobs([w.job for w in workflow.jobs])
        if workflow.id in self.workflows:
            return  # a retried submission
        now = time.time()
        self.workflows[workflow.id] = _Workflow(
            workflow.id, workflow.name, now, list(workflow.sinks)
        )
        woken: set[str] = set()
        earliest: float | None = None
        for w in workflow.jobs:
            j = w.job
            queue, due = self._insert(
                _Job(
                    j.id,
                    j.name,
                    j.queue,
                    j.priority,
                    j.state,
                    j.args,
                    j.run_at,
                    j.max_attempts,
                    None,
                    now,
                    workflow_id=workflow.id,
                    step=w.step,
                    pending_deps=w.pending_deps,
                    has_dependents=w.has_dependents,
                    pass_results=w.pass_results,
                ).limit_like(j)
            )
            if queue is not None:
                woken.add(queue)
            if due is not None:
                earliest = due if earliest is None else min(earliest, due)
        parents: dict[JobId, list[JobId]] = {}
        for edge in sorted(workflow.edges, key=lambda e: e.ord):
            parents.setdefault(edge.job_id, []).append(edge.depends_on)
        for child, ps in parents.items():
            self._add_edges(child, ps)
        self._wake(woken, earliest)

    async def enqueue_after(
        self,
        job: NewJob,
        after: Sequence[JobId],
        *,
        workflow_id: JobId | None = None,
        step: str | None = None,
    ) -> JobId:
        await anyio.lowlevel.checkpoint()
        check_jobs([job])
        check_text((step,))
        if job.id in self.jobs:
            return job.id  # a retried insert
        deps = list(dict.fromkeys(after))
        missing = [d for d in deps if d not in self.jobs]
        if missing:
            raise DependencyNotFoundError(job.name, missing)
        states = [self.jobs[d].state for d in deps]
        reason = upstream_reason(states)
        active = [d for d in deps if self.jobs[d].state in _ACTIVE]
        pending = 0 if reason else len(active)
        state = "cancelled" if reason else ("waiting" if pending else job.state)
        now = time.time()
        new = _Job(
            job.id, job.name, job.queue, job.priority, state, job.args, job.run_at,
            job.max_attempts, None, now, workflow_id=workflow_id, step=step,
            pending_deps=pending, reason=reason, finished_at=now if reason else None,
        ).limit_like(job)  # fmt: skip
        if not reason:
            for dep in active:
                self.jobs[dep].has_dependents = True
        self._add_edges(job.id, deps)
        queue, due = self._insert(new)
        self._wake([queue] if queue else [], due)
        return job.id

    async def workflow_info(self, workflow_id: JobId) -> WorkflowInfo | None:
        await anyio.lowlevel.checkpoint()
        workflow = self.workflows.get(workflow_id)
        if workflow is None:
            return None
        counts: dict[str, int] = {}
        for job in self._workflow_jobs(workflow_id):
            counts[job.state] = counts.get(job.state, 0) + 1
        return WorkflowInfo(
            workflow.id, workflow.name, workflow.created_at, list(workflow.sinks), counts
        )

    def _workflow_jobs(self, workflow_id: JobId) -> list[_Job]:
        return sorted(
            (j for j in self.jobs.values() if j.workflow_id == workflow_id), key=lambda j: j.id
        )

    async def workflow_failures(self, workflow_id: JobId, limit: int) -> list[StepFailure]:
        await anyio.lowlevel.checkpoint()
        upstream = ("upstream_failed", "upstream_cancelled")
        found = [
            j
            for j in self._workflow_jobs(workflow_id)
            if j.state in ("failed", "lost")
            or (j.state == "cancelled" and j.reason not in upstream)
        ]
        found.sort(key=lambda j: (j.finished_at is None, j.finished_at or 0.0, j.id))
        return [
            StepFailure(
                j.id,
                j.name,
                j.step,
                j.state,
                None if j.error is None else orjson.loads(j.error),
                j.reason,
            )
            for j in found[:limit]
        ]

    async def cancel_workflow(self, workflow_id: JobId, reason: str, now: float) -> tuple[int, int]:
        await anyio.lowlevel.checkpoint()
        check_text((reason,))
        ended: list[_Job] = []
        stopping = 0
        for job in self._workflow_jobs(workflow_id):
            if job.state in PENDING_STATES:
                job.reason, job.finished_at, job.cancel_requested = reason, now, False
                self._end(job, "cancelled", settle=False)  # settled below, as Postgres does
                ended.append(job)
            elif job.state == "running":
                job.reason, job.cancel_requested = reason, True
                self._emit("cancel", str(job.id))
                stopping += 1
        for job in ended:
            if job.has_dependents:
                self._settle(job)
        return len(ended), stopping

    async def parent_results(self, job_id: JobId) -> list[ParentResult]:
        await anyio.lowlevel.checkpoint()
        out: list[ParentResult] = []
        for parent_id in self._parents.get(job_id, ()):
            p = self.jobs.get(parent_id)
            if p is None:
                out.append(ParentResult(None, None, None, None, None))
            else:
                result = None if p.result is None else orjson.loads(p.result)
                out.append(ParentResult(p.id, p.name, p.step, p.state, result))
        return out

    # -- counting and purging -------------------------------------------------------------------

    async def count_jobs(self, queue: str | None, finished: bool) -> dict[str, int]:
        await anyio.lowlevel.checkpoint()
        counts = dict.fromkeys(ACTIVE_STATES + (TERMINAL_STATES if finished else ()), 0)
        for job in self.jobs.values():
            if job.state in counts and (queue is None or job.queue == queue):
                counts[job.state] += 1
        return counts

    async def purge_jobs(
        self, queue: str, state: str, limit: int, after: JobId | None
    ) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        if state not in PURGEABLE_STATES:
            raise ValueError(f"purge_jobs cannot delete {state!r} jobs")
        found = sorted(
            j.id
            for j in self.jobs.values()
            if j.state == state and j.queue == queue and (after is None or j.id > after)
        )[:limit]
        for job_id in found:
            job = self.jobs.pop(job_id)
            if job.unique_key is not None and self._unique.get(job.unique_key) == job_id:
                del self._unique[job.unique_key]
            if job.parked:
                self._parked.get(job.concurrency_key or "", set()).discard(job_id)
            if job_id in self._waiters:
                self._waiters.discard(job_id)
                self._emit("finished", str(job_id))
            self._parents.pop(job_id, None)
            if job.has_dependents and state in PENDING_STATES:
                job.state = "cancelled"  # as Postgres settles them: upstream_cancelled
                self._settle(job)
        return found

    # -- monitoring ------------------------------------------------------------------------------

    async def queue_counts(self) -> list[QueueCounts]:
        await anyio.lowlevel.checkpoint()
        counts: dict[str, list[Any]] = {}
        for job in self.jobs.values():
            if job.state not in ("queued", "running", "scheduled"):
                continue
            row = counts.setdefault(job.queue, [0, 0, 0, 0, None])
            if job.state == "queued":
                row[0] += 1
                row[1] += job.parked
                row[4] = job.run_at if row[4] is None else min(row[4], job.run_at)
            else:
                row[2 if job.state == "running" else 3] += 1
        return [QueueCounts(q, *row) for q, row in sorted(counts.items())]

    async def recent_failures(self, limit: int) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        failed = [
            j
            for j in self.jobs.values()
            if j.state in ("failed", "lost") and j.finished_at is not None
        ]
        failed.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
        return [_record(j) for j in failed[:limit]]

    async def live_nodes(self) -> list[NodeStatus]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        up = [n for n in self.nodes.values() if n.reaped_at is None and n.stopped_at is None]
        return [
            NodeStatus(
                n.info.id,
                n.info.host,
                n.info.pid,
                list(n.info.queues),
                n.info.concurrency,
                n.running,
                now - n.heartbeat_at,
                n.started_at,
                n.workers,
            )
            for n in up
        ]

    async def busy_keys(self, limit: int) -> list[BusyKey]:
        await anyio.lowlevel.checkpoint()
        by_key: dict[str, list[_Job]] = {}
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state == "running" and job.concurrency_key is not None:
                by_key.setdefault(job.concurrency_key, []).append(job)
        keys = sorted(by_key.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
        return [
            BusyKey(
                key,
                len(jobs),
                max(j.concurrency_limit or 1 for j in jobs),
                [(j.id, j.name, j.node_id) for j in jobs],
            )
            for key, jobs in keys
        ]

    async def rate_buckets(self, limit: int) -> list[RateBucket]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        rates = {
            j.rate_key: (j.rate_count or 1, j.rate_period or 0.0)
            for j in self.jobs.values()
            if j.rate_key is not None
        }
        buckets = sorted(self._rate_tat.items(), key=lambda kv: -kv[1])[:limit]
        return [RateBucket(key, *rates.get(key, (0, 0.0)), tat - now) for key, tat in buckets]

    # -- events --------------------------------------------------------------------------------

    async def listen(
        self,
        handler: EventHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._handlers.append(handler)
        try:
            task_status.started()
            await anyio.sleep_forever()
        finally:
            self._handlers.remove(handler)


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
