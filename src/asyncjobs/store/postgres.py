"""PostgresStore: the Store protocol on Postgres through asyncpg.

Hot paths are one statement per batch (see sql/queries.sql). Driver errors are translated at
this boundary: connection failures become ``StoreUnavailableError`` naming the host, a missing
schema becomes ``SchemaNotReadyError``, anything else ``StoreError``, always ``from`` the cause.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import anyio
import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy

from ..errors import MigrationError, SchemaNotReadyError, StoreError, StoreUnavailableError
from ..jobs import JobId, JobRecord, JobState
from ..settings import Settings, mask_dsn
from .base import (
    ClaimedJob,
    EventHandler,
    HeartbeatResult,
    NewJob,
    NodeInfo,
    Outcome,
    PromoteResult,
    StoreEvent,
    record_from_row,
)
from .queries import channel_name, load_migrations, load_queries

log = logging.getLogger("asyncjobs.store")

_JOB_COLUMNS = ("id", "name", "queue", "priority", "state", "args", "run_at", "max_attempts")
_EVENT_KINDS = {"q": "queue", "s": "scheduled", "c": "cancel", "f": "finished"}
_LISTEN_RETRY_MAX_S = 5.0  # the LISTEN connection retries with backoff up to this delay

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


def _jsonb_encode(data: bytes) -> bytes:
    # Payloads arrive already encoded (serialization.py measured and checked them); the binary
    # jsonb format is a version byte followed by the JSON text.
    return b"\x01" + data


def _jsonb_decode(data: bytes) -> bytes:
    return data[1:]


async def _init_connection(con: asyncpg.Connection) -> None:
    await con.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary", encoder=_jsonb_encode, decoder=_jsonb_decode
    )


_Conn = asyncpg.Connection | PoolConnectionProxy


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def _no_reset(con: asyncpg.Connection) -> None:
    # asyncpg's default reset sends "pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL"
    # on every release: a round trip per query. Our pooled connections never change session
    # state outside managed transactions (asyncpg still rolls those back), so skip it.
    return None


class _Lane:
    """A connection kept for one kind of hot-path statement (enqueue, claim, complete).

    Each of those has at most one statement in flight per process, and asyncpg's pool costs
    about as much per acquire/release as the statement itself on a small machine. A second
    concurrent user of the same lane simply takes a pooled connection.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self._con: asyncpg.Connection | None = None
        self._busy = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Conn]:
        if self._busy:
            async with self._store.pool.acquire() as pooled:
                yield pooled
            return
        self._busy = True
        try:
            con = self._con
            if con is None or con.is_closed():
                con = self._con = await self._store._connect()
            try:
                yield con
            except asyncpg.PostgresError:
                raise  # the statement failed; the connection is fine
            except BaseException:
                # Broken, or interrupted mid-statement: never reuse it.
                self._con = None
                con.terminate()
                raise
        finally:
            self._busy = False

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.terminate()


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
        self._pool: asyncpg.Pool | None = None
        self._enqueue_lane = _Lane(self)
        self._claim_lane = _Lane(self)
        self._complete_lane = _Lane(self)
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
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn,
                min_size=self.settings.pool_min_size,
                max_size=self.settings.pool_max_size,
                init=_init_connection,
                reset=_no_reset,
                timeout=self.settings.connect_timeout_s,
                server_settings={"application_name": "asyncjobs"},
            )
        except BaseException as exc:
            raise self._translate(exc) from exc

    async def _connect(self) -> asyncpg.Connection:
        con = await asyncpg.connect(
            self.dsn,
            timeout=self.settings.connect_timeout_s,
            server_settings={"application_name": "asyncjobs"},
        )
        await _init_connection(con)
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
            raise self._translate(exc) from exc

    def _translate(self, exc: BaseException) -> BaseException:
        """The asyncjobs error for a driver error (or the error itself if it is not one)."""
        if isinstance(exc, StoreError | anyio.get_cancelled_exc_class()):
            return exc
        if isinstance(exc, socket.gaierror):
            return StoreUnavailableError(self.target, f"the host name does not resolve ({exc})")
        if isinstance(exc, ConnectionRefusedError):
            return StoreUnavailableError(self.target, "connection refused (no server listening)")
        if isinstance(exc, TimeoutError):
            return StoreUnavailableError(
                self.target, f"no answer within {self.settings.connect_timeout_s:g} s"
            )
        if isinstance(
            exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
        ):
            return StoreUnavailableError(self.target, f"the server refused the login ({exc})")
        if isinstance(exc, asyncpg.InvalidCatalogNameError):
            return StoreUnavailableError(self.target, f"the database does not exist ({exc})")
        if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedObjectError):
            return SchemaNotReadyError(f"{self.target} schema {self.schema}", str(exc))
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailableError(self.target, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, asyncpg.PostgresError):
            return StoreError(f"Postgres rejected a statement: {type(exc).__name__}: {exc}")
        return exc

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        applied: list[str] = []
        t = f"{self.schema}.{self.prefix}"
        async with self._errors(), self.pool.acquire() as con, con.transaction():
            # One migrator at a time per schema and prefix; others wait, then find nothing to do.
            await con.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))",
                f"asyncjobs:{self.schema}.{self.prefix}",
            )
            await con.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            await con.execute(
                f"CREATE TABLE IF NOT EXISTS {t}migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            # Tables made before checksums were recorded get the column; their rows adopt the
            # current checksum below.
            await con.execute(f"ALTER TABLE {t}migrations ADD COLUMN IF NOT EXISTS checksum text")
            done = {r["version"]: r for r in await con.fetch(f"SELECT * FROM {t}migrations")}
            known = load_migrations(self.schema, self.prefix)
            newest = max(done, default=0)
            if newest > len(known):
                raise MigrationError(
                    self.description,
                    f"it is at migration {newest}, newer than this asyncjobs knows "
                    f"({len(known)}); upgrade asyncjobs on this machine",
                )
            for migration in known:
                row = done.get(migration.version)
                if row is not None:
                    if row["checksum"] is None:
                        await con.execute(
                            f"UPDATE {t}migrations SET checksum = $2 WHERE version = $1",
                            migration.version,
                            migration.checksum,
                        )
                    elif row["checksum"] != migration.checksum:
                        raise MigrationError(
                            self.description,
                            f"migration {migration.label} was changed after it was applied "
                            "there. Never edit an applied migration: add a new one",
                        )
                    continue
                await con.execute(migration.sql)
                await con.execute(
                    f"INSERT INTO {t}migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                applied.append(migration.label)
        if applied:
            log.info("migrated %s: applied %s", self.description, ", ".join(applied))
        return applied

    # -- producers -----------------------------------------------------------------------------

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        if not jobs:
            return []
        async with self._errors(), self._enqueue_lane.connection() as con:
            if len(jobs) == 1:
                row = await con.fetchrow(self.q["insert_job"], *jobs[0])
                if row is not None:
                    return [jobs[0].id]
                return await self._resolve_skipped(jobs, set())
            cols = list(zip(*jobs, strict=True))
            rows = await con.fetch(self.q["insert_jobs"], *cols)
        if len(rows) == len(jobs):
            return [j.id for j in jobs]
        async with self._errors():
            return await self._resolve_skipped(jobs, {r[0] for r in rows})

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        ready_queues: set[str] = set()
        earliest_scheduled: float | None = None
        times: dict[float, datetime] = {}  # most jobs of a batch share one run_at

        async def records() -> AsyncIterator[tuple[Any, ...]]:
            # Consumed by COPY while it streams: each job is prepared (and validated) while
            # the server ingests the previous ones.
            nonlocal earliest_scheduled
            for j in jobs:
                if j.unique_key is not None:
                    raise ValueError("enqueue_bulk cannot honour unique keys; use enqueue")
                when = times.get(j.run_at)
                if when is None:
                    when = times[j.run_at] = _utc(j.run_at)
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
        return None if row is None else record_from_row(row, orjson.loads)

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["cancel"], job_id, reason, now)
        state = row["state"] if row else None
        return None if state is None else JobState(state)

    async def watch(self, job_id: JobId) -> JobRecord | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["watch_job"], job_id)
        return None if row is None else record_from_row(row, orjson.loads)

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

    async def heartbeat(self, node_id: JobId, running: int) -> HeartbeatResult:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["heartbeat"], node_id, running)
        assert row is not None
        return HeartbeatResult(row["alive"], list(row["cancel_ids"]))

    async def deregister_node(self, node_id: JobId) -> None:
        async with self._errors():
            await self.pool.execute(self.q["deregister_node"], node_id)

    async def claim(
        self, node_id: JobId, limits: Mapping[str, int], now: float
    ) -> list[ClaimedJob]:
        async with self._errors(), self._claim_lane.connection() as con:
            rows = await con.fetch(
                self.q["claim"], node_id, list(limits.keys()), list(limits.values()), now
            )
        return [ClaimedJob(*r) for r in rows]

    async def complete(self, node_id: JobId, outcomes: Sequence[Outcome]) -> list[JobId]:
        if not outcomes:
            return []
        cols = list(zip(*outcomes, strict=True))
        async with self._errors(), self._complete_lane.connection() as con:
            rows = await con.fetch(self.q["complete"], node_id, *cols)
        return [r[0] for r in rows]

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["promote_due"], now, limit)
        assert row is not None
        return PromoteResult(row["moved"], row["next_run_at"])

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
                    server_settings={"application_name": "asyncjobs-listen"},
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
            except _CONNECTION_ERRORS as exc:
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
