"""PurgingMixin: PostgresStore's counting and purging of jobs by queue and state.

The purge statements, one per partial index, are built once in ``PgStoreBase.__init__``.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from ...jobs import JobId
from ..base import ACTIVE_STATES, PENDING_STATES, TERMINAL_STATES
from .base import PgStoreBase

_NIL_ID = uuid.UUID(int=0)  # below every id: a purge's first batch


class PurgingMixin(PgStoreBase):
    """Counting jobs by state, and deleting a queue's jobs of one state in batches."""

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
