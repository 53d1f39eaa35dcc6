"""ClaimsMixin: PostgresStore's consumer side after a claim (release, complete, promote).

``claim`` itself is defined on ``PostgresStore`` in ``asyncjobs.store.postgres``: it reads
``MAX_INPUT_BYTES`` as that module's global, at call time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from ...jobs import JobId
from ..base import Outcome, PromoteResult
from .base import PgStoreBase

_NULLABLE = tuple(
    Outcome._fields.index(f) for f in ("result", "error", "run_at", "reason", "wall_s", "cpu_s")
)


def _by_id(outcome: Outcome) -> JobId:
    return outcome.id


class ClaimsMixin(PgStoreBase):
    """Claimed jobs: handing claims back, writing outcomes, moving due jobs to their queue."""

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
        cols: list[tuple[Any, ...] | None] = list(zip(*sorted(outcomes, key=_by_id), strict=True))
        # A column that is all NULL (no errors, no retries, no results: the common batch) goes
        # as one NULL instead of an array of them: complete_jobs's unnest pads it with NULLs,
        # and asyncpg's array encoder costs about 0.3 µs per element.
        for i in _NULLABLE:
            column = cols[i]
            if column is not None and column.count(None) == len(column):
                cols[i] = None
        async with self._errors(), self._complete_lane.connection() as con:
            rows = await con.fetch(self.q["complete"], node_id, *cols)
        return [r[0] for r in rows]

    async def promote_due(self, now: float, limit: int) -> PromoteResult:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["promote_due"], now, limit)
        assert row is not None
        return PromoteResult(row["moved"], row["next_run_at"])
