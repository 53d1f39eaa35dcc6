"""What crosses the Store protocol: the row types every backend takes and returns, the job
states as the stores name them, and the limits and bucket sizes they share."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from ..jobs import JobId, JobRecord, JobState
from ..serialization import decode_args

TERMINAL_STATES = ("succeeded", "failed", "cancelled", "lost")
PENDING_STATES = ("scheduled", "waiting", "queued")  # states a cancel ends at once
ACTIVE_STATES = (*PENDING_STATES, "running")  # not finished
PURGEABLE_STATES = (*PENDING_STATES, *TERMINAL_STATES)  # all but running: see purge_jobs
# The most a workflow step receives as its parents' results, all together (JSON bytes). Over
# it, the step fails with InputsTooLargeError when claimed, instead of building an argument
# list Postgres cannot hold (a jsonb value is limited to 256 MiB).
MAX_INPUT_BYTES = 64 * 1024 * 1024
RATE_HORIZON_S = 2.0  # how far ahead a claim books the starts of rate-limited jobs
STATS_BUCKET_S = 10.0  # the nodes' statistics count finished attempts in buckets this long


def stats_bucket(when: float) -> float:
    """The start of the statistics bucket that holds epoch time ``when``."""
    return math.floor(when / STATS_BUCKET_S) * STATS_BUCKET_S


class NewJob(NamedTuple):
    """A job to insert. ``args`` is the encoded ``[args, kwargs]`` JSON."""

    id: JobId
    name: str
    queue: str
    priority: int
    state: str  # "queued" or "scheduled"
    args: bytes
    run_at: float
    max_attempts: int
    unique_key: str | None
    # Concurrency key and rate limit (asyncjobs.limits); None for most jobs.
    concurrency_key: str | None = None
    concurrency_limit: int | None = None
    rate_key: str | None = None
    rate_count: int | None = None
    rate_period: float | None = None
    # The enqueue span's context, as asyncjobs.tracing encodes it; None unless tracing is on.
    trace: str | None = None

    @property
    def limited(self) -> bool:
        return self.concurrency_key is not None or self.rate_key is not None


PLAIN_FIELDS = 9  # NewJob's fields every insert statement takes (and trace, the last one)


class ClaimedJob(NamedTuple):
    """A job a node has just claimed: it is ``running`` with this attempt number."""

    id: JobId
    name: str
    queue: str
    attempt: int
    max_attempts: int
    # With its parents' results first, for a workflow step that takes them; None if those
    # results are over MAX_INPUT_BYTES together (the node then fails the job).
    args: bytes | None
    workflow_id: JobId | None = None
    delay: float = 0.0  # seconds to wait before starting it: its rate limit's booked start
    concurrency_key: str | None = None
    wait: float = 0.0  # seconds it waited to be claimed after it was due
    trace: str | None = None  # the context its enqueue span stored (NewJob.trace)


class WorkflowJob(NamedTuple):
    """A job of a workflow to insert: the job, plus where it sits in the DAG."""

    job: NewJob  # its state is "waiting" while pending_deps > 0
    step: str  # its key in the workflow
    pending_deps: int  # parents not succeeded yet
    has_dependents: bool
    pass_results: str | None  # None, "one" (chain step) or "list" (chord callback)


class Edge(NamedTuple):
    """``job_id`` runs after ``depends_on`` succeeds; ``ord`` is the parent's position."""

    job_id: JobId
    ord: int
    depends_on: JobId


class NewWorkflow(NamedTuple):
    """A validated workflow, ready to insert in one transaction."""

    id: JobId
    name: str | None
    jobs: Sequence[WorkflowJob]
    edges: Sequence[Edge]
    sinks: list[JobId]  # the steps nothing depends on: the workflow's results


class WorkflowInfo(NamedTuple):
    """A workflow as stored, with its jobs counted by state."""

    id: JobId
    name: str | None
    created_at: float
    sinks: list[JobId]
    counts: dict[str, int]


class StepFailure(NamedTuple):
    """A workflow job that failed, was lost, or was cancelled (other than upstream)."""

    id: JobId
    name: str
    step: str | None
    state: str
    error: dict[str, Any] | None
    reason: str | None


class JobQuery(NamedTuple):
    """Filters for ``Store.list_jobs``; None means any."""

    state: str | None = None
    queue: str | None = None
    name: str | None = None
    since: JobId | None = None  # created at or after the time this id encodes (UUIDv7)
    before: JobId | None = None  # ids below this one: the next page
    limit: int = 50


class QueueCounts(NamedTuple):
    """One queue's unfinished jobs, counted through the partial indexes."""

    queue: str
    queued: int  # ready to run (parked ones included)
    parked: int  # queued, waiting for a slot of their concurrency key
    running: int
    scheduled: int  # delayed, or waiting for a retry's backoff
    oldest_queued_at: float | None  # epoch seconds: when the longest-waiting job became due


class NodeStatus(NamedTuple):
    """A node that is up (not stopped, not reaped)."""

    id: JobId
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    running: int  # as of its last heartbeat
    heartbeat_age_s: float  # by the database's clock
    started_at: float
    workers: int = 0  # its process pool's live workers, as of its last heartbeat


class Throughput(NamedTuple):
    """Attempts the nodes finished over a recent window, by outcome (``succeeded``,
    ``failed``, ``cancelled``, ``retried``), from the per-node statistics."""

    window_s: float  # the span the counts cover (a little over the window asked for)
    finished: dict[str, int]

    @property
    def per_s(self) -> float:
        total = sum(self.finished.values())
        return total / self.window_s if self.window_s > 0 else 0.0


class StatsRow(NamedTuple):
    """A node's finished attempts of one job name and outcome in one statistics bucket, as
    its heartbeat writes them (``job_stats``)."""

    bucket: float  # epoch seconds: the bucket's start
    name: str
    outcome: str  # succeeded, failed, cancelled or retried
    attempts: int
    wait_s: float
    wall_s: float
    max_wall_s: float
    timed: int
    timed_wall_s: float
    cpu_s: float


def add_stats(acc: list[float], r: StatsRow) -> None:
    """Add ``r`` to ``acc``, [attempts, wait, wall, max_wall, timed, timed_wall, cpu]: how a
    node's rows and the stored ones are summed (``job_stats`` in Postgres does the same)."""
    acc[0] += r.attempts
    acc[1] += r.wait_s
    acc[2] += r.wall_s
    acc[3] = max(acc[3], r.max_wall_s)
    acc[4] += r.timed
    acc[5] += r.timed_wall_s
    acc[6] += r.cpu_s


class JobStats(NamedTuple):
    """One job name's finished attempts over a period, with their summed timings."""

    name: str
    attempts: int
    failed: int  # attempts that ended failed (retried ones included)
    wait_s: float  # summed queue waits
    wall_s: float  # summed run times
    cpu_s: float  # summed CPU times, over the attempts that measured it
    timed: int  # attempts with a CPU time
    timed_wall_s: float  # their summed run times
    max_wall_s: float


class BusyKey(NamedTuple):
    """A concurrency key with running jobs, and the jobs holding its slots."""

    key: str
    running: int
    limit: int
    holders: list[tuple[JobId, str, JobId | None]]  # (job id, job name, node id)


class RateBucket(NamedTuple):
    """A rate bucket: its rate, and how far ahead (seconds) its next free start is; zero or
    less means a job may start now."""

    key: str
    starts: int
    period_s: float
    ahead_s: float


class ParentResult(NamedTuple):
    """One parent of a job, as ``JobContext.parent_results`` reads it."""

    id: JobId | None  # None if the parent was pruned
    name: str | None
    step: str | None
    state: str | None
    result: Any


class Outcome(NamedTuple):
    """How one attempt ended, as the node reports it.

    ``state`` is terminal, or ``queued``/``scheduled`` for a retry (then ``run_at`` is set).
    ``result`` and ``error`` are encoded JSON.
    """

    id: JobId
    attempt: int
    state: str
    result: bytes | None
    error: bytes | None
    finished_at: float
    run_at: float | None
    reason: str | None
    wall_s: float | None = None  # the attempt's run time, as its node measured it
    cpu_s: float | None = None  # its CPU time, where measured


class PromoteResult(NamedTuple):
    moved: int
    next_run_at: float | None  # epoch seconds of the next scheduled job, if any


class HeartbeatResult(NamedTuple):
    alive: bool  # False once the node was reaped (or its row is gone)
    cancel_requested: list[JobId]


class ReapedNode(NamedTuple):
    """A node the reaper took over, and what became of its running jobs."""

    node_id: JobId
    heartbeat_at: float  # epoch seconds of its last heartbeat
    requeued: int
    lost: int
    cancelled: int


@dataclass(frozen=True, slots=True)
class NodeInfo:
    id: JobId
    host: str
    pid: int
    version: str
    queues: tuple[str, ...]
    concurrency: int
    durable: tuple[str, ...] = ()  # the names of the jobs it runs as durable (the reaper reads)


class StepWrite(NamedTuple):
    """One step's record as a job's node writes it (``ctx.step``, ``ctx.sleep``, ...).

    ``kind`` is call, sleep or wait; ``state`` running (written before a step that is not
    idempotent runs), succeeded or failed. ``result`` and ``error`` are encoded JSON.
    """

    seq: int  # 1 for the job's first step call
    kind: str
    name: str
    state: str
    idempotent: bool
    digest: bytes | None  # of its arguments
    call: str | None  # its arguments, as far as a message shows them
    started_at: float | None
    finished_at: float | None
    result: bytes | None = None
    error: bytes | None = None


class StepRecord(NamedTuple):
    """A step as stored: what ``app.steps()`` returns, and what a resumed job replays."""

    seq: int
    kind: str  # call, sleep or wait
    state: str  # running, succeeded or failed
    name: str
    attempt: int  # the attempt that ran it
    idempotent: bool
    digest: bytes | None
    call: str | None
    result: Any  # decoded
    error: dict[str, Any] | None
    started_at: float | None  # epoch seconds
    finished_at: float | None
    node_id: JobId | None


def step_record(row: Any) -> StepRecord:
    """A StepRecord from a row of job_steps (result and error as encoded JSON)."""
    result, error = row["result"], row["error"]
    return StepRecord(
        row["seq"], row["kind"], row["state"], row["name"], row["attempt"], row["idempotent"],
        None if row["digest"] is None else bytes(row["digest"]), row["call"],
        None if result is None else orjson.loads(result),
        None if error is None else orjson.loads(error),
        row["started_at"], row["finished_at"], row["node_id"],
    )  # fmt: skip


class ParkResult(NamedTuple):
    parked: bool  # False: the awaited job has ended already (or the attempt is stale)
    owned: bool  # False: the attempt no longer runs on this node (fenced)
    concurrency_key: str | None  # the parked job's, whose slot it gave back


class ScheduleRecord(NamedTuple):
    """A schedule as the store keeps it (``asyncjobs schedules list``)."""

    name: str
    job: str
    spec: str
    definition: dict[str, Any]
    paused: bool
    fired: int
    missed: int
    skipped: int
    last_fire_at: float | None
    next_fire_at: float | None
    created_at: float
    updated_at: float


class StoreEvent(NamedTuple):
    """A wake-up pushed by the store (LISTEN/NOTIFY for Postgres).

    kinds: ``queue`` (jobs became ready in queue ``value``), ``scheduled`` (a job is due at
    epoch ``value``), ``cancel`` (job ``value`` was asked to cancel), ``finished`` (awaited job
    ``value`` ended), ``reconnected`` (events may have been missed; re-check everything).
    """

    kind: str
    value: str


EventHandler = Callable[[StoreEvent], None]


def upstream_reason(states: Iterable[str]) -> str | None:
    """Why a job whose dependencies are in these states can never run, or None if it can.

    A dependency that failed or was lost makes it ``upstream_failed``; one that was cancelled,
    ``upstream_cancelled``.
    """
    reason = None
    for state in states:
        if state in ("failed", "lost"):
            return "upstream_failed"
        if state == "cancelled":
            reason = "upstream_cancelled"
    return reason


def record_from_row(row: Any) -> JobRecord:
    """Build a ``JobRecord`` from a row with the jobs table's column names (payloads as bytes)."""
    args, kwargs = decode_args(row["args"])
    result = row["result"]
    error = row["error"]
    return JobRecord(
        id=row["id"],
        name=row["name"],
        queue=row["queue"],
        priority=row["priority"],
        state=JobState(row["state"]),
        args=args,
        kwargs=kwargs,
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        run_at=row["run_at"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        node_id=row["node_id"],
        unique_key=row["unique_key"],
        result=orjson.loads(result) if result is not None else None,
        error=orjson.loads(error) if error is not None else None,
        reason=row["reason"],
        cancel_requested=row["cancel_requested"],
        schedule=row["schedule"],
        fire_at=row["fire_at"],
        workflow_id=row["workflow_id"],
        step=row["step"],
        wall_s=row["wall_s"],
        cpu_s=row["cpu_s"],
    )
