"""The harness's own SQL (``store/sql/loadtest.sql``): its jobs' timings, its schema.

The schema and table prefix are the only values formatted into the statements, after
``Settings`` validated them as identifiers; everything else is a bind parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import asyncpg

from ..jobs import JobId
from ..store.queries import load_queries


class Finished(NamedTuple):
    """One finished job of the run, as stored. Times are epoch seconds."""

    id: JobId
    state: str
    created_at: float
    started_at: float | None  # None for a job cancelled before it ran
    finished_at: float | None  # None only from ``current``, for a job not finished
    error_type: str | None
    reason: str | None


class LoadTestQueries:
    """The statements, rendered for one schema and table prefix."""

    def __init__(self, schema: str, prefix: str) -> None:
        self.schema = schema
        self.q = load_queries(schema, prefix, "loadtest.sql")

    async def finished(self, con: asyncpg.Connection, ids: Sequence[JobId]) -> list[Finished]:
        rows = await con.fetch(self.q["loadtest_finished"], list(ids))
        return [Finished(*row.values()) for row in rows]

    async def current(self, con: asyncpg.Connection, ids: Sequence[JobId]) -> list[Finished]:
        """The jobs as they are now; ``finished_at`` is None for those still unfinished."""
        rows = await con.fetch(self.q["loadtest_current"], list(ids))
        return [Finished(*row.values()) for row in rows]

    async def schema_exists(self, con: asyncpg.Connection) -> bool:
        return bool(await con.fetchval(self.q["loadtest_schema_exists"], self.schema))

    async def drop_schema(self, con: asyncpg.Connection) -> None:
        await con.execute(self.q["loadtest_drop_schema"])
