"""The Store protocol: what every backend guarantees (DESIGN §5).

Both ``MemoryStore`` and ``PostgresStore`` implement it with the same semantics, and one
conformance suite (tests/conformance) runs against both. Hot-path methods take and return
batches, so a backend can serve a batch in one round trip.

Times are epoch seconds from the app's clock, passed in by the caller. The only exception is the
node heartbeat, which uses the database's own clock so that nodes with skewed clocks still judge
each other's liveness consistently.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio
import orjson

from ..jobs import JobId, JobRecord, JobState
from ..serialization import decode_args

if TYPE_CHECKING:
    from ..schedules import FirePlan, ScheduleDef

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

    @property
    def limited(self) -> bool:
        return self.concurrency_key is not None or self.rate_key is not None


PLAIN_FIELDS = 9  # NewJob's fields every insert statement takes; the rest: limited jobs only


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


class Store(Protocol):
    """A job store. Every method is safe to call from several nodes at once."""

    description: str  # where the data lives, for logs and errors (password masked)

    async def open(self) -> None:
        """Connect. Raises ``StoreUnavailableError`` with a sentence if it cannot."""

    async def close(self) -> None:
        """Release connections. Idempotent."""

    async def migrate(self) -> list[str]:
        """Bring the schema up to date; returns the migrations applied (safe to repeat)."""

    # -- producers ---------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        """Insert jobs atomically (all or none) and return their ids, in order.

        A job whose ``unique_key`` matches an unfinished job is not inserted: the existing
        job's id is returned in its place. A job whose id already exists (a retried insert) is
        not inserted twice.
        """

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        """Insert many jobs without unique keys, all or none (``enqueue_many``'s fast path).

        The iterable may be lazy: the store consumes it inside its transaction, so preparing
        the next jobs overlaps with writing the previous ones. If the iterable raises, nothing
        is written and the exception propagates.
        """

    async def get(self, job_id: JobId) -> JobRecord | None:
        """The job, or None."""

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        """Cancel a job: pending jobs end ``cancelled``; a running one is flagged and its node
        told. Returns the state after the request (``running`` while the node acts), or None
        if there is no such job."""

    async def watch(self, job_id: JobId) -> JobRecord | None:
        """Ask to be told (a ``finished`` event) when the job ends, and return it as it is now."""

    async def find_jobs(self, name: str, limit: int) -> list[JobRecord]:
        """The first ``limit`` jobs named ``name``, oldest first (for tests: not indexed)."""

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        """Jobs matching ``query``, newest first, at most ``query.limit``; page on with
        ``before`` = the last id of a page (keyset pagination on the primary key)."""

    async def retry_jobs(self, job_ids: Sequence[JobId], now: float) -> list[JobId]:
        """Queue failed or lost jobs again, for one more attempt (their workflow dependents,
        already cancelled, stay cancelled). Returns the ids that were re-queued."""

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(self, node: NodeInfo) -> None: ...

    async def heartbeat(
        self, node_id: JobId, running: int, workers: int = 0, stats: Sequence[StatsRow] = ()
    ) -> HeartbeatResult:
        """Refresh the node's heartbeat (``running`` jobs, ``workers`` in its pool), add its
        statistics since the last one, and say whether it is alive and what to cancel."""

    async def deregister_node(self, node_id: JobId) -> None: ...

    async def reap(self, reaper_id: JobId, node_timeout_s: float, limit: int) -> list[ReapedNode]:
        """Reap at most ``limit`` nodes silent for more than ``node_timeout_s`` (by the store's
        clock), or stopped. Each node is reaped once, by one reaper. Its running jobs become
        ``cancelled`` (cancel requested), ``queued`` (attempts left; the attempt counts) or
        ``lost`` (with the reason ``node <id> stopped heartbeating at <time>``)."""

    async def prune(self, retention_s: float, limit: int) -> int:
        """Delete at most ``limit`` jobs that finished more than ``retention_s`` ago; returns
        how many. Short, and never blocks on a job another pruner holds."""

    async def prune_rest(self, retention_s: float, waiter_ttl_s: float) -> None:
        """Delete nodes reaped or stopped more than ``retention_s`` ago, and registrations of
        interest (``watch``) older than ``waiter_ttl_s``."""

    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        """Claim at most ``limits[queue]`` ready jobs per queue, highest priority first, then
        oldest, within their concurrency keys and rate limits. A job is claimed by exactly
        one node; its attempt number goes up by one. A reaped node claims nothing.
        ``freeing``: keys of jobs this node finished but has not recorded yet."""

    async def release_claims(self, node_id: JobId, keep: Sequence[JobId]) -> int:
        """Put back to ``queued`` (attempt undone) the jobs running on ``node_id`` that are not
        in ``keep``: claims whose answer was lost. Returns how many."""

    async def complete(self, node_id: JobId, outcomes: Sequence[Outcome]) -> list[JobId]:
        """Apply outcomes atomically. An outcome whose job is no longer running that attempt on
        this node is rejected (fencing); the ids of rejected outcomes are returned."""

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        """Move scheduled jobs whose time has come to ``queued``."""

    # -- schedules -------------------------------------------------------------------------------

    async def sync_schedule(self, defn: ScheduleDef, now: float) -> None:
        """Record a schedule as declared in code (first declared at ``now`` if it is new); its
        state (paused, counters, last fire) is kept."""

    async def fire_schedule(self, defn: ScheduleDef, now: float) -> FirePlan | None:
        """Fire what is due: under the schedule's lock, decide with ``schedules.plan`` on the
        stored state, insert the runs (one job per fire time, ever) and advance the state.
        Returns what was done, or None if nothing was due (or the schedule is paused)."""

    async def release_waiting(self, names: Sequence[str]) -> int:
        """Queue the waiting run of each named schedule whose other runs have all ended."""

    # -- workflows and dependencies -------------------------------------------------------------

    async def submit_workflow(self, workflow: NewWorkflow) -> None:
        """Insert a workflow, all its jobs and all its edges in one transaction. A retried
        submission of the same workflow (same id) writes nothing more."""

    async def enqueue_after(
        self,
        job: NewJob,
        after: Sequence[JobId],
        *,
        workflow_id: JobId | None = None,
        step: str | None = None,
    ) -> JobId:
        """Insert one job that runs once every job in ``after`` has succeeded.

        In one transaction, the dependencies are locked, so none can end unseen. Raises
        ``DependencyNotFoundError`` if one does not exist. If one already ended without
        succeeding, the job is inserted ``cancelled`` (``upstream_failed`` or
        ``upstream_cancelled``), as a workflow step would be.
        """

    async def workflow_info(self, workflow_id: JobId) -> WorkflowInfo | None: ...

    async def workflow_failures(self, workflow_id: JobId, limit: int) -> list[StepFailure]: ...

    async def cancel_workflow(self, workflow_id: JobId, reason: str, now: float) -> tuple[int, int]:
        """Cancel every unfinished job of the workflow; returns (cancelled now, running ones
        asked to stop)."""

    async def parent_results(self, job_id: JobId) -> list[ParentResult]:
        """The job's parents, in edge order, with their results."""

    # -- counting and purging -------------------------------------------------------------------

    async def count_jobs(self, queue: str | None, finished: bool) -> dict[str, int]:
        """Jobs of ``queue`` (every queue if None) per unfinished state, through indexes; with
        ``finished``, the finished states too (a count over the history)."""

    async def purge_jobs(
        self, queue: str, state: str, limit: int, after: JobId | None
    ) -> list[JobId]:
        """Delete at most ``limit`` jobs of ``queue`` in ``state`` (one of PURGEABLE_STATES:
        never running) with ids above ``after``, in one transaction, skipping any a claim
        holds; their dependents are cancelled, their waiters woken. Returns the deleted ids,
        in order."""

    # -- limits ----------------------------------------------------------------------------------

    async def queue_counts(self) -> list[QueueCounts]:
        """Each queue's queued, parked, running and scheduled jobs, and its oldest wait."""

    async def live_nodes(self) -> list[NodeStatus]:
        """The nodes that are up, oldest first."""

    async def recent_failures(self, limit: int) -> list[JobRecord]:
        """The jobs that failed or were lost most recently, newest first."""

    async def throughput(self, now: float, window_s: float) -> Throughput:
        """Attempts finished by the nodes over the last ``window_s`` seconds, by outcome."""

    async def job_stats(self, since: float) -> list[JobStats]:
        """Per job name, the attempts finished since ``since`` (epoch seconds), busiest first."""

    async def list_workflows(self, before: JobId | None, limit: int) -> list[WorkflowInfo]:
        """Workflows, newest first (keyset pages on the id), with their jobs counted by state."""

    async def busy_keys(self, limit: int) -> list[BusyKey]:
        """Concurrency keys with running jobs, busiest first."""

    async def rate_buckets(self, limit: int) -> list[RateBucket]:
        """Rate buckets, the most booked ahead first."""

    async def list_schedules(self) -> list[ScheduleRecord]: ...

    async def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        """Pause or resume; resuming skips the fire times of the pause. False if no such
        schedule."""

    async def listen(
        self,
        handler: EventHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Deliver events to ``handler`` until cancelled, reconnecting as needed."""


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
