"""PgStoreBase: the connection state, the loaded queries and the helpers of every area.

It owns the lifecycle (open, close) and the schema (migrate). Driver errors are translated at
this boundary (``_errors``): connection failures become ``StoreUnavailableError`` naming the
host, a missing schema becomes ``SchemaNotReadyError``, anything else ``StoreError``, always
``from`` the cause.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import asyncpg

from ...errors import StoreError
from ...settings import Settings, mask_dsn
from ..base import PENDING_STATES, PURGEABLE_STATES
from ..connections import Lane, init_connection, no_reset, translate_error
from ..migrations import apply_migrations
from ..queries import channel_name, load_queries

log = logging.getLogger("asyncjobs.store")

# States with a partial index, and that index's condition (constants, never user input): see
# list_jobs in queries.sql.
_STATE_INDEXES = {
    "failed": "state IN ('failed', 'lost')",
    "lost": "state IN ('failed', 'lost')",
    "running": "state = 'running'",
    "scheduled": "state = 'scheduled'",
}
DEADLOCK_TRIES = 3  # see _transaction()
T = TypeVar("T")
# JIT off: its compile time (10 ms and more) dwarfs the short statements of a job queue, and
# the planner turns it on from cost estimates that swing with the number of running jobs.
_SERVER_SETTINGS = {"application_name": "asyncjobs", "jit": "off"}
# The conditions a purge finds a state's jobs by, each matching a partial index (the others:
# state = '<state>').
_PURGE_CONDITIONS = {"queued": ["state = 'queued' AND NOT parked", "state = 'queued' AND parked"]}


class PgStoreBase:
    """What every area of PostgresStore shares: the pool and lanes, the queries, the helpers."""

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
        self._step_lane = Lane(self._connect, lambda: self.pool)  # durable jobs' step records
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
        for lane in (self._enqueue_lane, self._claim_lane, self._complete_lane, self._step_lane):
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

    # -- schema --------------------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        async with self._errors(), self.pool.acquire() as con:
            applied = await apply_migrations(con, self.schema, self.prefix, self.description)
        if applied:
            log.info("migrated %s: applied %s", self.description, ", ".join(applied))
        return applied
