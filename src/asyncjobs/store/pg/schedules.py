"""SchedulesMixin: PostgresStore's recurring schedules (sync, fire, list, pause)."""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from ...errors import ScheduleNotFoundError
from ...ids import new_ids
from ...schedules import FirePlan, ScheduleDef, ScheduleState, plan
from ..base import ScheduleRecord
from .base import PgStoreBase


class SchedulesMixin(PgStoreBase):
    """Schedules: mirroring their definitions, and firing each fire time at most once."""

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
