"""StepsMixin: PostgresStore's durable jobs: their steps' records, and parking.

Every write is fenced by the attempt and its node, like an outcome: a stale attempt writes
nothing. A step's record holds the job's row (FOR SHARE) until it commits, which is what the
reaper waits for before it decides on the job (see reap_lock in queries.sql).
"""

from __future__ import annotations

import asyncpg

from ...jobs import JobId
from ..base import ParkResult, StepRecord, StepWrite, step_record
from .base import PgStoreBase


class StepsMixin(PgStoreBase):
    """Steps of durable jobs, and parking them in ``ctx.sleep`` and ``ctx.wait_for``."""

    async def record_step(
        self, node_id: JobId, job_id: JobId, attempt: int, step: StepWrite
    ) -> bool:
        async with self._errors(), self._step_lane.connection() as con:
            seq = await con.fetchval(
                self.q["record_step"], job_id, attempt, node_id, *_step_args(step)
            )
        return seq is not None

    async def job_steps(self, job_id: JobId) -> list[StepRecord]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["job_steps"], job_id)
        return [step_record(r) for r in rows]

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
        async def body(con: asyncpg.Connection) -> ParkResult:
            if step is not None:
                recorded = await con.fetchval(
                    self.q["record_step"], job_id, attempt, node_id, *_step_args(step)
                )
                if recorded is None:
                    return ParkResult(False, False, None)
            # Two statements, so that the second sees the rows as they are once locked.
            await con.execute(self.q["park_lock"], job_id, wait_on)
            row = await con.fetchrow(
                self.q["park_job"], job_id, attempt, node_id, reason, until, wait_on
            )
            assert row is not None
            if row["parked"] and row["concurrency_key"] is not None:  # its slot is free
                await con.execute(self.q["unpark"], [row["concurrency_key"]])
            return ParkResult(row["parked"], row["owned"], row["concurrency_key"])

        return await self._transaction(body)


def _step_args(s: StepWrite) -> tuple[object, ...]:
    """record_step's parameters $4.. in their order."""
    return (
        s.seq, s.idempotent, s.kind, s.name, s.state, s.digest, s.started_at, s.finished_at,
        s.call, s.result, s.error,
    )  # fmt: skip
