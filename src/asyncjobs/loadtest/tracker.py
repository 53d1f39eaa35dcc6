"""Which jobs of the run have finished, read from their rows in batches.

The driver hands over every submission's job ids once they are stored. A poller reads, by
primary key, which of them have finished, up to ``POLL_BATCH`` ids per statement, taking the
unfinished ones in turn (round robin), so the cost to the cluster under test is one index probe
per job checked, and bounded per poll, however far behind the cluster falls. Nothing is added
to the product's hot path: no waiter rows, no notifications, no hooks.

Latency comes from the rows' own timestamps, so how often this polls changes only how soon the
live display and the closed loop learn that a job ended, not the latency reported.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence

import anyio
import asyncpg

from ..jobs import JobId
from .db import Finished, LoadTestQueries
from .report import TERMINAL, JobOutcome, WorkflowOutcome, error_kind

log = logging.getLogger("asyncjobs.loadtest")

POLL_INTERVAL_S = 0.05  # between two polls (the closed loop refills at this pace, at worst)
POLL_BATCH = 2000  # most job ids one poll checks


class Submission:
    """One enqueue (an io or cpu job) or one submitted workflow, and what is left of it."""

    __slots__ = ("ids", "kind", "left", "outcomes")

    def __init__(self, kind: str, ids: Sequence[JobId]) -> None:
        self.kind = kind
        self.ids = ids
        self.left = len(ids)
        self.outcomes: list[JobOutcome] = []


class Tracker:
    """Tracks the run's jobs until they finish, and keeps their outcomes."""

    def __init__(
        self,
        queries: LoadTestQueries,
        dsn: str,
        *,
        on_done: Callable[[Submission], None] | None = None,
        batch: int = POLL_BATCH,
    ) -> None:
        self.queries = queries
        self.dsn = dsn
        self.on_done = on_done
        self.batch = batch
        self._con: asyncpg.Connection | None = None
        self._to_check: deque[JobId] = deque()
        self._owner: dict[JobId, Submission] = {}
        self._idle = anyio.Event()
        self._idle.set()
        self.jobs: list[JobOutcome] = []
        self.workflows: list[WorkflowOutcome] = []
        self.submitted: Counter[str] = Counter()
        self.enqueued_jobs = 0
        self.enqueue_errors: Counter[str] = Counter()
        self.enqueue_call_s: list[float] = []
        self.submissions_in_flight = 0
        self.errors = 0  # jobs that did not succeed, and failed enqueues
        self.recent_finish_s: list[float] = []  # single jobs finished since take_recent()
        self.poll_errors = 0

    # -- fed by the driver --------------------------------------------------------------------

    def add(self, kind: str, ids: Sequence[JobId], call_s: float) -> None:
        """A submission is stored: track its jobs."""
        sub = Submission(kind, ids)
        for job_id in ids:
            self._owner[job_id] = sub
        self._to_check.extend(ids)
        self.submitted[kind] += 1
        self.enqueued_jobs += len(ids)
        self.enqueue_call_s.append(call_s)
        self.submissions_in_flight += 1
        if self._idle.is_set():
            self._idle = anyio.Event()

    def enqueue_failed(self, kind: str, exc: BaseException) -> None:
        self.enqueue_errors[type(exc).__name__] += 1
        self.errors += 1
        log.debug("enqueue of a %s submission failed: %s", kind, exc)

    # -- state -----------------------------------------------------------------------------

    @property
    def jobs_in_flight(self) -> int:
        return len(self._owner)

    @property
    def finished_jobs(self) -> int:
        return len(self.jobs)

    def take_recent(self) -> list[float]:
        """Enqueue-to-finish times (s) of single jobs finished since the last call."""
        recent, self.recent_finish_s = self.recent_finish_s, []
        return recent

    async def wait_idle(self) -> None:
        """Return once every tracked job has finished."""
        while not self._idle.is_set():
            await self._idle.wait()

    def unfinished_ids(self) -> list[JobId]:
        return list(self._owner)

    # -- polling ---------------------------------------------------------------------------

    async def run(self, interval: float = POLL_INTERVAL_S) -> None:
        """Poll until cancelled. A lost connection is opened again at the next poll."""
        try:
            while True:
                try:
                    await self.poll_once()
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                    self.poll_errors += 1
                    log.warning("reading the run's finished jobs failed (%s); retrying", exc)
                    await self._close()
                    await anyio.sleep(max(interval, 0.5))
                await anyio.sleep(interval)
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    async def poll_once(self) -> int:
        """Check up to ``batch`` unfinished jobs; returns how many had finished."""
        if not self._to_check:
            return 0
        ids = [self._to_check.popleft() for _ in range(min(self.batch, len(self._to_check)))]
        try:
            rows = await self.queries.finished(await self._connection(), ids)
        except BaseException:
            self._to_check.extendleft(reversed(ids))  # checked again next time
            raise
        done = {row.id for row in rows}
        self._to_check.extend(i for i in ids if i not in done)
        for row in rows:
            self._record(row)
        return len(rows)

    async def final_read(self) -> dict[str, int]:
        """Read every job still unfinished once more, record those that have finished, and
        count the others by state. One row per job, so each is counted once, in one state."""
        ids = self.unfinished_ids()
        con = await self._connection()
        counts: Counter[str] = Counter()
        seen = 0
        for i in range(0, len(ids), self.batch):
            for row in await self.queries.current(con, ids[i : i + self.batch]):
                seen += 1
                if row.state in TERMINAL:
                    self._record(row)
                else:
                    counts[row.state] += 1
        if len(ids) > seen:
            counts["missing"] += len(ids) - seen  # deleted meanwhile (pruned, or by hand)
        return dict(counts)

    def _record(self, row: Finished) -> None:
        sub = self._owner.pop(row.id, None)
        if sub is None:
            return
        kind = "step" if sub.kind == "workflow" else sub.kind
        error = error_kind(row.state, row.error_type, row.reason)
        # Every finished job has its finished_at; the fallback only keeps a bad row countable.
        finished = row.finished_at or row.started_at or row.created_at
        outcome = JobOutcome(kind, row.state, row.created_at, row.started_at, finished, error)
        self.jobs.append(outcome)
        if error is not None:
            self.errors += 1
        if kind != "step" and row.started_at is not None:
            self.recent_finish_s.append(finished - row.created_at)
        sub.left -= 1
        if sub.kind == "workflow":
            sub.outcomes.append(outcome)
        if sub.left == 0:
            self._submission_done(sub)

    def _submission_done(self, sub: Submission) -> None:
        self.submissions_in_flight -= 1
        if sub.kind == "workflow":
            steps = sub.outcomes
            starts = [s.started for s in steps if s.started is not None]
            ok = all(s.state == "succeeded" for s in steps)
            self.workflows.append(
                WorkflowOutcome(
                    "succeeded" if ok else "failed",
                    min(s.created for s in steps),
                    min(starts) if starts else None,
                    max(s.finished for s in steps),
                )
            )
            sub.outcomes = []
        if not self._owner:
            self._idle.set()
        if self.on_done is not None:
            self.on_done(sub)

    async def _connection(self) -> asyncpg.Connection:
        if self._con is None or self._con.is_closed():
            self._con = await asyncpg.connect(
                self.dsn, server_settings={"application_name": "asyncjobs-loadtest"}
            )
        return self._con

    async def _close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            try:
                await con.close(timeout=2)
            except Exception:
                con.terminate()
