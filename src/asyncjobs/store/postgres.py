"""PostgresStore: the Store protocol on Postgres through asyncpg.

Hot paths are one statement per batch (see sql/queries.sql). Driver errors are translated at
this boundary: connection failures become ``StoreUnavailableError`` naming the host, a missing
schema becomes ``SchemaNotReadyError``, anything else ``StoreError``, always ``from`` the cause.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg
import orjson

from ..clock import to_datetime
from ..errors import DependencyNotFoundError, ScheduleNotFoundError, StoreError
from ..ids import id_floor, new_ids
from ..jobs import JobId, JobRecord, JobState
from ..schedules import FirePlan, ScheduleDef, ScheduleState, plan
from ..settings import Settings, mask_dsn
from .base import (
    ACTIVE_STATES,
    MAX_INPUT_BYTES,
    PENDING_STATES,
    PLAIN_FIELDS,
    PURGEABLE_STATES,
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
    record_from_row,
    stats_bucket,
    upstream_reason,
)
from .connections import (
    CONNECTION_ERRORS,
    Lane,
    init_connection,
    no_reset,
    translate_error,
)
from .migrations import apply_migrations
from .queries import channel_name, load_queries

log = logging.getLogger("asyncjobs.store")

_JOB_COLUMNS = ("id", "name", "queue", "priority", "state", "args", "run_at", "max_attempts")
# States with a partial index, and that index's condition (constants, never user input): see
# list_jobs in queries.sql.
_STATE_INDEXES = {
    "failed": "state IN ('failed', 'lost')",
    "lost": "state IN ('failed', 'lost')",
    "running": "state = 'running'",
    "scheduled": "state = 'scheduled'",
}
_WORKFLOW_JOB_COLUMNS = (
    *_JOB_COLUMNS, "workflow_id", "step", "pending_deps", "has_dependents", "pass_results",
    "concurrency_key", "concurrency_limit", "rate_key", "rate_count", "rate_period",
)  # fmt: skip
_EDGE_COLUMNS = ("job_id", "ord", "depends_on")
_EVENT_KINDS = {"q": "queue", "s": "scheduled", "c": "cancel", "f": "finished"}
_LISTEN_RETRY_MAX_S = 5.0  # the LISTEN connection retries with backoff up to this delay
PRUNE_CLOCK_SLACK_S = 3600.0  # see prune()
DEADLOCK_TRIES = 3  # see _transaction()
T = TypeVar("T")
# JIT off: its compile time (10 ms and more) dwarfs the short statements of a job queue, and
# the planner turns it on from cost estimates that swing with the number of running jobs.
_SERVER_SETTINGS = {"application_name": "asyncjobs", "jit": "off"}


_NIL_ID = uuid.UUID(int=0)  # below every id: a purge's first batch
# The conditions a purge finds a state's jobs by, each matching a partial index (the others:
# state = '<state>').
_PURGE_CONDITIONS = {"queued": ["state = 'queued' AND NOT parked", "state = 'queued' AND parked"]}


def _by_id(outcome: Outcome) -> JobId:
    return outcome.id


class PostgresStore:
    """Jobs in Postgres. Several nodes may share one database (and one schema)."""

    def __init__(self, settings: Settings) -> None:
        if not settings.dsn:
            raise ValueError("PostgresStore needs settings.dsn")
        self.settings = settings
        self.dsn = settings.dsn
        self.schema = settings.schema
        self.prefix = settings.table_prefix
        self.table = f"{settings.table_prefix}jobs"
        self.channel = channel_name(settings.schema, settings.table_prefix)
        self.q = load_queries(settings.schema, settings.table_prefix)
        self._list_by_state = {
            state: self.q["list_jobs"].replace("/* state index */", f"{condition} AND")
            for state, condition in _STATE_INDEXES.items()
        }
        self._purge_by_state = {  # constants, never user input (see purge_jobs)
            state: [
                self.q["purge_jobs"]
                .replace("/* state */", condition + ("" if pending else " AND id > $3"))
                .replace("/* order */", "" if pending else "ORDER BY id")
                for condition in _PURGE_CONDITIONS.get(state, [f"state = '{state}'"])
            ]
            for state in PURGEABLE_STATES
            for pending in [state in PENDING_STATES]
        }
        self._pool: asyncpg.Pool | None = None
        self._enqueue_lane = Lane(self._connect, lambda: self.pool)
        self._claim_lane = Lane(self._connect, lambda: self.pool)
        self._complete_lane = Lane(self._connect, lambda: self.pool)
        parts = urlsplit(self.dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        db = (parts.path or "/").lstrip("/") or parts.username or "postgres"
        self.target = f"{host}:{port}/{db}"
        self.description = f"postgres {mask_dsn(self.dsn)} (schema {self.schema})"

    # -- connections -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._pool is not None:
            return
        async with self._errors():
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                init=init_connection,
                reset=no_reset,
                timeout=self.settings.connect_timeout_s,
                server_settings=_SERVER_SETTINGS,
            )

    async def _connect(self) -> asyncpg.Connection:
        con = await asyncpg.connect(
            self.dsn,
            timeout=self.settings.connect_timeout_s,
            server_settings=_SERVER_SETTINGS,
        )
        await init_connection(con)
        return con

    async def close(self) -> None:
        for lane in (self._enqueue_lane, self._claim_lane, self._complete_lane):
            lane.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                with anyio.fail_after(self.settings.connect_timeout_s):
                    await pool.close()
            except BaseException:
                pool.terminate()
                raise

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("the store is not open; start the app first")
        return self._pool

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except (StoreError, anyio.get_cancelled_exc_class()):
            raise
        except Exception as exc:
            if isinstance(exc, asyncpg.InternalClientError) and self._pool is not None:
                # The pooled connection that raised it may go back to the pool in a state
                # asyncpg cannot use; replace every pooled connection on its next acquire.
                await self._pool.expire_connections()
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> BaseException:
        return translate_error(
            exc,
            target=self.target,
            schema=self.schema,
            connect_timeout_s=self.settings.connect_timeout_s,
        )

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        async with self._errors(), self.pool.acquire() as con:
            applied = await apply_migrations(con, self.schema, self.prefix, self.description)
        if applied:
            log.info("migrated %s: applied %s", self.description, ", ".join(applied))
        return applied

    # -- producers -----------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        if not jobs:
            return []
        # Jobs without unique keys take a plain INSERT (cheaper than ON CONFLICT). If one of
        # them exists already (a re-sent insert), that INSERT fails whole, writing nothing, and
        # the batch goes again through the ON CONFLICT variant, which skips it. A single
        # enqueue (the common case) takes scalar parameters, not unnest arrays. A job with a
        # concurrency key or a rate limit needs the columns only insert_jobs_unique writes.
        plain_params: tuple[Any, ...]
        keyed_params: tuple[Any, ...]
        if len(jobs) == 1 and not jobs[0].limited:
            plain, keyed = "insert_job", "insert_job_unique"
            plain_params = keyed_params = tuple(jobs[0])[:PLAIN_FIELDS]
        else:
            plain, keyed = "insert_jobs", "insert_jobs_unique"
            keyed_params = tuple(zip(*jobs, strict=True))
            plain_params = keyed_params[:PLAIN_FIELDS]
        straight_to_keyed = any(j.unique_key is not None or j.limited for j in jobs)
        async with self._errors(), self._enqueue_lane.connection() as con:
            rows = None
            if not straight_to_keyed:
                with suppress(asyncpg.UniqueViolationError):  # then the ON CONFLICT variant
                    rows = await con.fetch(self.q[plain], *plain_params)
            if rows is None:
                rows = await con.fetch(self.q[keyed], *keyed_params)
        if len(rows) == len(jobs):
            return [j.id for j in jobs]
        async with self._errors():
            return await self._resolve_skipped(jobs, {r[0] for r in rows})

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        ready_queues: set[str] = set()
        earliest_scheduled: float | None = None
        times: dict[float, datetime] = {}  # most jobs of a batch share one run_at

        def records() -> Iterator[tuple[Any, ...]]:
            # Consumed by COPY while it streams: each job is prepared (and validated) while
            # the server ingests the previous ones. A plain generator: asyncpg consumes it in
            # a tight loop and writes whenever its buffer fills; an async one would cost a
            # coroutine resume per row.
            nonlocal earliest_scheduled
            for j in jobs:
                if j.unique_key is not None or j.limited:
                    raise ValueError("enqueue_bulk cannot honour unique keys or limits")
                when = times.get(j.run_at)
                if when is None:
                    when = times[j.run_at] = to_datetime(j.run_at)
                if j.state == "queued":
                    ready_queues.add(j.queue)
                elif earliest_scheduled is None or j.run_at < earliest_scheduled:
                    earliest_scheduled = j.run_at
                yield (j.id, j.name, j.queue, j.priority, j.state, j.args, when, j.max_attempts)

        async with self._errors(), self._enqueue_lane.connection() as con, con.transaction():
            await con.copy_records_to_table(
                self.table, schema_name=self.schema, columns=_JOB_COLUMNS, records=records()
            )
            await con.execute(self.q["notify_new"], sorted(ready_queues), earliest_scheduled)

    async def _resolve_skipped(self, jobs: Sequence[NewJob], inserted: set[JobId]) -> list[JobId]:
        skipped = [j for j in jobs if j.id not in inserted]
        rows = await self.pool.fetch(
            self.q["find_existing"], [j.id for j in skipped], [j.unique_key for j in skipped]
        )
        existing = {r["requested"]: r["existing"] for r in rows}
        out: list[JobId] = []
        for job in jobs:
            if job.id in inserted:
                out.append(job.id)
                continue
            found = existing.get(job.id)
            if found is None:
                # The job holding the unique key finished between the insert and this lookup.
                retried = await self.enqueue([job])
                found = retried[0]
            out.append(found)
        return out

    async def get(self, job_id: JobId) -> JobRecord | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["get_job"], job_id)
        return None if row is None else record_from_row(row)

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        async def body(con: asyncpg.Connection) -> Any:
            row = await con.fetchrow(self.q["cancel"], job_id, reason, now)
            assert row is not None
            if row["settle"]:  # its dependents can never run now
                await con.execute(self.q["settle_jobs"], [job_id], ["cancelled"])
            return row["state"]

        state = await self._transaction(body)
        return None if state is None else JobState(state)

    async def _transaction(self, body: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction, again if Postgres broke a deadlock by aborting it.

        Statements that lock several jobs (settling a workflow's dependents, cancelling a
        workflow, the reaper) lock them in id order, but two of them can still meet in
        opposite orders across levels of a DAG; Postgres then aborts one, which is retried.
        """
        async with self._errors():
            for attempt in range(1, DEADLOCK_TRIES + 1):
                try:
                    async with self.pool.acquire() as con, con.transaction():
                        return await body(con)
                except asyncpg.DeadlockDetectedError:
                    if attempt == DEADLOCK_TRIES:
                        raise
                    log.warning("deadlock broken by Postgres; retrying (try %d)", attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        sql = self._list_by_state.get(query.state or "", self.q["list_jobs"])
        async with self._errors():
            rows = await self.pool.fetch(sql, *query)
        return [record_from_row(r) for r in rows]

    async def retry_jobs(self, job_ids: Sequence[JobId], now: float) -> list[JobId]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["retry_jobs"], list(job_ids), now)
        return [r["id"] for r in rows]

    async def find_jobs(self, name: str, limit: int) -> list[JobRecord]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["find_jobs"], name, limit)
        return [record_from_row(r) for r in rows]

    async def watch(self, job_id: JobId) -> JobRecord | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["watch_job"], job_id)
        return None if row is None else record_from_row(row)

    # -- nodes ---------------------------------------------------------------------------------

    async def register_node(self, node: NodeInfo) -> None:
        async with self._errors():
            await self.pool.execute(
                self.q["register_node"],
                node.id,
                node.host,
                node.pid,
                node.version,
                list(node.queues),
                node.concurrency,
            )

    async def heartbeat(
        self, node_id: JobId, running: int, workers: int = 0, stats: Sequence[StatsRow] = ()
    ) -> HeartbeatResult:
        columns: list[Any] = [list(c) for c in zip(*stats, strict=True)] if stats else [[]] * 10
        async with self._errors():
            row = await self.pool.fetchrow(self.q["heartbeat"], node_id, running, workers, *columns)
        assert row is not None
        return HeartbeatResult(row["alive"], list(row["cancel_ids"]))

    async def deregister_node(self, node_id: JobId) -> None:
        async with self._errors():
            await self.pool.execute(self.q["deregister_node"], node_id)

    async def reap(self, reaper_id: JobId, node_timeout_s: float, limit: int) -> list[ReapedNode]:
        async def body(con: asyncpg.Connection) -> list[ReapedNode]:
            rows = await con.fetch(self.q["reap"], node_timeout_s, reaper_id, limit)
            ids = [i for r in rows for i in r["settle_ids"] or ()]
            if ids:  # lost or cancelled jobs with dependents: settle them in the same transaction
                states = [s for r in rows for s in r["settle_states"] or ()]
                await con.execute(self.q["settle_jobs"], ids, states)
            keys = [k for r in rows for k in r["keys"] or ()]
            if keys:  # the dead node's slots go to the jobs parked for them
                await con.execute(self.q["unpark"], keys)
            return [ReapedNode(*r[:5]) for r in rows]

        return await self._transaction(body)

    async def prune(self, retention_s: float, limit: int) -> int:
        # The id bound may only be too high, never too low: an hour of slack covers a client
        # clock ahead of the database's when the jobs were enqueued.
        bound = id_floor(time.time() - retention_s + PRUNE_CLOCK_SLACK_S)
        async with self._errors():
            deleted = await self.pool.fetchval(self.q["prune_jobs"], retention_s, bound, limit)
        return int(deleted)

    async def prune_rest(self, retention_s: float, waiter_ttl_s: float) -> None:
        async with self._errors():
            await self.pool.execute(self.q["prune_rest"], retention_s, waiter_ttl_s)

    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        async with self._errors(), self._claim_lane.connection() as con:
            rows = await con.fetch(
                self.q["claim"], node_id, list(limits.keys()), list(limits.values()), now,
                MAX_INPUT_BYTES, list(freeing),
            )  # fmt: skip
        return [ClaimedJob(*r) for r in rows]

    async def release_claims(self, node_id: JobId, keep: Sequence[JobId]) -> int:
        async def body(con: asyncpg.Connection) -> int:
            row = await con.fetchrow(self.q["release_claims"], node_id, list(keep))
            assert row is not None
            if row["keys"]:  # their slots are free again
                await con.execute(self.q["unpark"], row["keys"])
            return int(row["released"])

        return await self._transaction(body)

    async def complete(self, node_id: JobId, outcomes: Sequence[Outcome]) -> list[JobId]:
        if not outcomes:
            return []
        # In id order, the order every statement that locks several jobs takes its locks in
        # (stable: of two outcomes for one job, the first still comes first).
        cols = list(zip(*sorted(outcomes, key=_by_id), strict=True))
        async with self._errors(), self._complete_lane.connection() as con:
            rows = await con.fetch(self.q["complete"], node_id, *cols)
        return [r[0] for r in rows]

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["promote_due"], now, limit)
        assert row is not None
        return PromoteResult(row["moved"], row["next_run_at"])

    # -- schedules -------------------------------------------------------------------------------

    async def sync_schedule(self, defn: ScheduleDef, now: float) -> None:
        definition = orjson.dumps(defn.definition())
        async with self._errors():
            await self.pool.execute(
                self.q["sync_schedule"], defn.name, defn.job, defn.spec, definition, now,
                defn.next_fire_after(now),
            )  # fmt: skip

    async def fire_schedule(self, defn: ScheduleDef, now: float) -> FirePlan | None:
        async with self._errors(), self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow(self.q["lock_schedule"], defn.name)
            if row is None:
                raise ScheduleNotFoundError(defn.name)
            decision = plan(defn, ScheduleState(*row), now)
            if decision is None:
                return None
            inserted = 0  # as the memory store counts: runs written, not runs planned
            if decision.runs:
                t = defn.template
                inserted = await con.fetchval(
                    self.q["insert_runs"], defn.name, t.name, t.queue, t.priority, t.args,
                    t.max_attempts, new_ids(len(decision.runs)),
                    [r.fire_at for r in decision.runs], [r.state for r in decision.runs],
                    t.concurrency_key, t.concurrency_limit, t.rate_key, t.rate_count,
                    t.rate_period,
                )  # fmt: skip
            await con.execute(
                self.q["advance_schedule"], defn.name, decision.last_fire_at,
                decision.next_fire_at, inserted, decision.missed, decision.skipped,
            )  # fmt: skip
        return decision

    async def release_waiting(self, names: Sequence[str]) -> int:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["release_waiting"], list(names))
        assert row is not None
        return int(row["released"])

    async def list_schedules(self) -> list[ScheduleRecord]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["list_schedules"])
        # The query's columns are the record's fields, in order.
        return [ScheduleRecord(*r)._replace(definition=orjson.loads(r["definition"])) for r in rows]

    async def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        async with self._errors():
            found = await self.pool.fetchval(self.q["pause_schedule"], name, paused, now)
        return found is not None

    # -- workflows and dependencies -------------------------------------------------------------

    async def submit_workflow(self, workflow: NewWorkflow) -> None:
        ready_queues: set[str] = set()
        earliest_scheduled: float | None = None
        records = []
        for w in workflow.jobs:
            j = w.job
            if j.state == "queued":
                ready_queues.add(j.queue)
            elif j.state == "scheduled" and (
                earliest_scheduled is None or j.run_at < earliest_scheduled
            ):
                earliest_scheduled = j.run_at
            records.append(
                (j.id, j.name, j.queue, j.priority, j.state, j.args, to_datetime(j.run_at),
                 j.max_attempts, workflow.id, w.step, w.pending_deps, w.has_dependents,
                 w.pass_results, j.concurrency_key, j.concurrency_limit, j.rate_key,
                 j.rate_count, j.rate_period)
            )  # fmt: skip
        async with self._errors(), self._enqueue_lane.connection() as con, con.transaction():
            inserted = await con.fetchval(
                self.q["insert_workflow"], workflow.id, workflow.name, workflow.sinks
            )
            if inserted is None:
                return  # a retried submission whose first try committed: all is written
            await con.copy_records_to_table(
                self.table, schema_name=self.schema, columns=_WORKFLOW_JOB_COLUMNS,
                records=records,
            )  # fmt: skip
            if workflow.edges:
                await con.copy_records_to_table(
                    f"{self.prefix}job_deps", schema_name=self.schema, columns=_EDGE_COLUMNS,
                    records=workflow.edges,
                )  # fmt: skip
            await con.execute(self.q["notify_new"], sorted(ready_queues), earliest_scheduled)

    async def enqueue_after(
        self,
        job: NewJob,
        after: Sequence[JobId],
        *,
        workflow_id: JobId | None = None,
        step: str | None = None,
    ) -> JobId:
        deps = list(dict.fromkeys(after))  # each dependency once, in the order given

        async def body(con: asyncpg.Connection) -> None:
            rows = await con.fetch(self.q["lock_dependencies"], deps)
            states = {r["id"]: r["state"] for r in rows}
            missing = [d for d in deps if d not in states]
            if missing:
                raise DependencyNotFoundError(job.name, missing)
            active = [d for d in deps if states[d] not in TERMINAL_STATES]
            reason = upstream_reason(states[d] for d in deps)
            pending = 0 if reason else len(active)
            state = "cancelled" if reason else ("waiting" if pending else job.state)
            if active and not reason:
                await con.execute(self.q["mark_dependents"], active)
            found = await con.fetchval(
                self.q["insert_dependent"], job.id, job.name, job.queue, job.priority, state,
                job.args, job.run_at, job.max_attempts, workflow_id, pending, step, None,
                reason, job.concurrency_key, job.concurrency_limit, job.rate_key,
                job.rate_count, job.rate_period,
            )  # fmt: skip
            if found is not None:  # not a retried insert
                await con.execute(
                    self.q["insert_edges"], [job.id] * len(deps), list(range(len(deps))), deps
                )

        await self._transaction(body)
        return job.id

    async def workflow_info(self, workflow_id: JobId) -> WorkflowInfo | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["workflow_info"], workflow_id)
        if row is None:
            return None
        return WorkflowInfo(
            row["id"], row["name"], row["created_at"], list(row["sinks"]),
            orjson.loads(row["counts"]),
        )  # fmt: skip

    async def workflow_failures(self, workflow_id: JobId, limit: int) -> list[StepFailure]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["workflow_failures"], workflow_id, limit)
        return [
            StepFailure(
                r["id"],
                r["name"],
                r["step"],
                r["state"],
                None if r["error"] is None else orjson.loads(r["error"]),
                r["reason"],
            )
            for r in rows
        ]

    async def cancel_workflow(self, workflow_id: JobId, reason: str, now: float) -> tuple[int, int]:
        async def body(con: asyncpg.Connection) -> tuple[int, int]:
            locked = await con.fetch(self.q["lock_workflow"], workflow_id)
            if not locked:
                return 0, 0
            row = await con.fetchrow(
                self.q["cancel_locked"], [r["id"] for r in locked], reason, now
            )
            assert row is not None
            ended = list(row["ended"] or ())
            if ended:  # dependents outside the workflow (enqueued with after=) end too
                await con.execute(self.q["settle_jobs"], ended, ["cancelled"] * len(ended))
            return int(row["cancelled"]), int(row["stopping"])

        return await self._transaction(body)

    async def parent_results(self, job_id: JobId) -> list[ParentResult]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["parent_results"], job_id)
        return [
            ParentResult(
                r["id"],
                r["name"],
                r["step"],
                r["state"],
                None if r["result"] is None else orjson.loads(r["result"]),
            )
            for r in rows
        ]

    # -- limits ----------------------------------------------------------------------------------

    async def count_jobs(self, queue: str | None, finished: bool) -> dict[str, int]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["count_unfinished"], queue)
            if finished:
                rows += await self.pool.fetch(self.q["count_finished"], queue)
        counts = dict.fromkeys(ACTIVE_STATES + (TERMINAL_STATES if finished else ()), 0)
        for r in rows:  # queued comes in two parts, ready and parked
            counts[r["state"]] += r["n"]
        return counts

    async def purge_jobs(
        self, queue: str, state: str, limit: int, after: JobId | None
    ) -> list[JobId]:
        pending = state in PENDING_STATES  # a finished job's dependents are settled already
        tail = () if pending else (after or _NIL_ID,)

        async def body(con: asyncpg.Connection) -> list[JobId]:
            rows: list[Any] = []
            for sql in self._purge_by_state[state]:
                if len(rows) < limit:
                    rows += await con.fetch(sql, queue, limit - len(rows), *tail)
            settle = [r["id"] for r in rows if r["has_dependents"]] if pending else []
            if settle:  # a deleted job's dependents can never run: cancelled, as by a cancel
                await con.execute(self.q["settle_jobs"], settle, ["cancelled"] * len(settle))
            return sorted(r["id"] for r in rows)

        return await self._transaction(body)

    async def queue_counts(self) -> list[QueueCounts]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["queue_counts"])
        return [QueueCounts(*r) for r in rows]

    async def recent_failures(self, limit: int) -> list[JobRecord]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["recent_failures"], limit)
        return [record_from_row(r) for r in rows]

    async def live_nodes(self) -> list[NodeStatus]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["live_nodes"])
        return [
            NodeStatus(
                r["id"],
                r["host"],
                r["pid"],
                list(r["queues"]),
                r["concurrency"],
                r["running"],
                r["heartbeat_age_s"],
                r["started_at"],
                r["workers"],
            )
            for r in rows
        ]

    async def throughput(self, now: float, window_s: float) -> Throughput:
        since = stats_bucket(now - window_s)
        async with self._errors():
            rows = await self.pool.fetch(self.q["throughput"], since)
        return Throughput(max(now - since, STATS_BUCKET_S), {r[0]: int(r[1]) for r in rows})

    async def job_stats(self, since: float) -> list[JobStats]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["job_stats"], stats_bucket(since))
        return [JobStats(*r) for r in rows]

    async def list_workflows(self, before: JobId | None, limit: int) -> list[WorkflowInfo]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["list_workflows"], before, limit)
        return [
            WorkflowInfo(
                r["id"], r["name"], r["created_at"], list(r["sinks"]), orjson.loads(r["counts"])
            )
            for r in rows
        ]

    async def busy_keys(self, limit: int) -> list[BusyKey]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["busy_keys"], limit)
        return [
            BusyKey(
                r["key"],
                r["running"],
                r["lim"],
                list(zip(r["ids"], r["names"], r["nodes"], strict=True)),
            )
            for r in rows
        ]

    async def rate_buckets(self, limit: int) -> list[RateBucket]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["rate_buckets"], limit)
        return [RateBucket(*r) for r in rows]

    # -- events --------------------------------------------------------------------------------

    async def listen(
        self,
        handler: EventHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold a LISTEN connection; on loss, reconnect with backoff and emit ``reconnected``."""
        started = False
        delay = 0.05
        while True:
            lost = anyio.Event()
            con: asyncpg.Connection | None = None
            try:
                con = await asyncpg.connect(
                    self.dsn,
                    timeout=self.settings.connect_timeout_s,
                    server_settings={**_SERVER_SETTINGS, "application_name": "asyncjobs-listen"},
                )

                def on_notify(_c: object, _pid: int, _chan: str, payload: object) -> None:
                    kind, _, value = str(payload).partition(":")
                    handler(StoreEvent(_EVENT_KINDS.get(kind, kind), value))

                con.add_termination_listener(lambda _c, ev=lost: ev.set())  # this loop's event
                await con.add_listener(self.channel, on_notify)
                delay = 0.05
                if started:
                    log.info("LISTEN connection to %s restored", self.target)
                    handler(StoreEvent("reconnected", ""))
                else:
                    started = True
                    task_status.started()
                await lost.wait()
                log.warning("LISTEN connection to %s lost; reconnecting", self.target)
            except CONNECTION_ERRORS as exc:
                if not started:
                    raise self._translate(exc) from exc
                log.warning(
                    "LISTEN connection to %s failed (%s); retrying in %.2f s",
                    self.target,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX_S)
            finally:
                if con is not None and not con.is_closed():
                    con.terminate()
