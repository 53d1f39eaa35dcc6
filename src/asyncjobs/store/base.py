"""The Store protocol: what every backend guarantees (DESIGN §5).

Both ``MemoryStore`` and ``PostgresStore`` implement it with the same semantics, and one
conformance suite (tests/integration/test_store_conformance.py) runs against both. Hot-path
methods take and return batches, so a backend can serve a batch in one round trip. The row
types they exchange are in rows.py, and named here too.

Times are epoch seconds from the app's clock, passed in by the caller. The only exception is the
node heartbeat, which uses the database's own clock so that nodes with skewed clocks still judge
each other's liveness consistently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import anyio

from ..jobs import JobId, JobRecord, JobState
from .rows import (
    ACTIVE_STATES,
    MAX_INPUT_BYTES,
    PENDING_STATES,
    PLAIN_FIELDS,
    PURGEABLE_STATES,
    RATE_HORIZON_S,
    STATS_BUCKET_S,
    TERMINAL_STATES,
    BusyKey,
    ClaimedJob,
    Edge,
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
    ParkResult,
    PromoteResult,
    QueueCounts,
    RateBucket,
    ReapedNode,
    ScheduleRecord,
    StatsRow,
    StepFailure,
    StepRecord,
    StepWrite,
    StoreEvent,
    Throughput,
    WorkflowInfo,
    WorkflowJob,
    add_stats,
    record_from_row,
    stats_bucket,
    step_record,
    upstream_reason,
)

if TYPE_CHECKING:
    from ..schedules import FirePlan, ScheduleDef


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

    # -- durable jobs: steps and parking ----------------------------------------------------------

    async def record_step(
        self, node_id: JobId, job_id: JobId, attempt: int, step: StepWrite
    ) -> bool:
        """Record (or replace) one step of the job, if that attempt still runs on that node;
        False if it does not (a stale attempt: nothing is written). A step recorded as
        running is seen by whoever reaps the node."""

    async def job_steps(self, job_id: JobId) -> list[StepRecord]:
        """The job's recorded steps, in call order."""

    async def park(
        self,
        node_id: JobId,
        job_id: JobId,
        attempt: int,
        reason: str,
        *,
        until: float | None = None,
        wait_on: JobId | None = None,
        step: StepWrite | None = None,
    ) -> ParkResult:
        """Park a running attempt (fenced), with ``step`` recorded in the same transaction:
        ``scheduled`` until ``until``, or ``waiting`` until job ``wait_on`` ends (any end, or
        its deletion). Nothing is parked if ``wait_on`` has ended already or does not exist.
        Its next run is not a retry: it is allowed one more attempt."""

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


__all__ = [
    "ParkResult",
    "StepRecord",
    "StepWrite",
    "step_record",  # the row types live in rows.py; every backend imports them from here
    "ACTIVE_STATES",
    "add_stats",
    "BusyKey",
    "ClaimedJob",
    "Edge",
    "EventHandler",
    "HeartbeatResult",
    "JobQuery",
    "JobStats",
    "MAX_INPUT_BYTES",
    "NewJob",
    "NewWorkflow",
    "NodeInfo",
    "NodeStatus",
    "Outcome",
    "ParentResult",
    "PENDING_STATES",
    "PLAIN_FIELDS",
    "PromoteResult",
    "PURGEABLE_STATES",
    "QueueCounts",
    "RATE_HORIZON_S",
    "RateBucket",
    "ReapedNode",
    "record_from_row",
    "ScheduleRecord",
    "stats_bucket",
    "STATS_BUCKET_S",
    "StatsRow",
    "StepFailure",
    "Store",
    "StoreEvent",
    "TERMINAL_STATES",
    "Throughput",
    "upstream_reason",
    "WorkflowInfo",
    "WorkflowJob",
]
