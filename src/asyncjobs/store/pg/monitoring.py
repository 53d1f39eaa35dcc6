"""MonitoringMixin: PostgresStore's reads for status and the dashboard."""

from __future__ import annotations

import orjson

from ...jobs import JobId, JobRecord
from ..base import (
    STATS_BUCKET_S,
    BusyKey,
    JobStats,
    NodeStatus,
    QueueCounts,
    RateBucket,
    Throughput,
    WorkflowInfo,
    record_from_row,
    stats_bucket,
)
from .base import PgStoreBase


class MonitoringMixin(PgStoreBase):
    """Monitoring: queue counts, failures, live nodes, throughput, workflows, limits."""

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
