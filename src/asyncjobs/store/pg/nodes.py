"""NodesMixin: PostgresStore's nodes (register, heartbeat, deregister), the reaper, the pruner."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from ...ids import id_floor
from ...jobs import JobId
from ..base import HeartbeatResult, NodeInfo, ReapedNode, StatsRow
from .base import PgStoreBase

PRUNE_CLOCK_SLACK_S = 3600.0  # see prune()


class NodesMixin(PgStoreBase):
    """Nodes and their upkeep: liveness, taking over dead nodes' jobs, deleting old rows."""

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
                list(node.durable),
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
            # Two statements, so that the second decides under a snapshot taken once the
            # first holds the dead nodes' jobs: a step record committed meanwhile is seen.
            dead = await con.fetch(self.q["reap_lock"], node_timeout_s, reaper_id, limit)
            if not dead:
                return []
            rows = await con.fetch(
                self.q["reap_jobs"], [d["id"] for d in dead], [d["heartbeat_at"] for d in dead]
            )
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
