"""Monitoring in the MemoryStore: the views the dashboard and asyncjobs status read.

Queue counts, recent failures, live nodes, throughput and per-job statistics (from the nodes'
heartbeats, kept in MemoryState._stats as in Postgres's job_stats table), busy concurrency keys
and rate buckets. Nothing here changes state.
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.lowlevel

from ...jobs import JobRecord
from ..base import (
    STATS_BUCKET_S,
    BusyKey,
    JobStats,
    NodeStatus,
    QueueCounts,
    RateBucket,
    Throughput,
    stats_bucket,
)
from .state import MemoryState, _Job, _record


class MonitoringMixin(MemoryState):
    """queue_counts, recent_failures, live_nodes, throughput, job_stats, busy_keys, rate_buckets."""

    async def queue_counts(self) -> list[QueueCounts]:
        await anyio.lowlevel.checkpoint()
        counts: dict[str, list[Any]] = {}
        for job in self.jobs.values():
            if job.state not in ("queued", "running", "scheduled"):
                continue
            row = counts.setdefault(job.queue, [0, 0, 0, 0, None])
            if job.state == "queued":
                row[0] += 1
                row[1] += job.parked
                row[4] = job.run_at if row[4] is None else min(row[4], job.run_at)
            else:
                row[2 if job.state == "running" else 3] += 1
        return [QueueCounts(q, *row) for q, row in sorted(counts.items())]

    async def recent_failures(self, limit: int) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        failed = [
            j
            for j in self.jobs.values()
            if j.state in ("failed", "lost") and j.finished_at is not None
        ]
        failed.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
        return [_record(j) for j in failed[:limit]]

    async def live_nodes(self) -> list[NodeStatus]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        up = [n for n in self.nodes.values() if n.reaped_at is None and n.stopped_at is None]
        return [
            NodeStatus(
                n.info.id,
                n.info.host,
                n.info.pid,
                list(n.info.queues),
                n.info.concurrency,
                n.running,
                now - n.heartbeat_at,
                n.started_at,
                n.workers,
            )
            for n in up
        ]

    async def throughput(self, now: float, window_s: float) -> Throughput:
        await anyio.lowlevel.checkpoint()
        since = stats_bucket(now - window_s)
        finished: dict[str, int] = {}
        for (bucket, _, _, outcome), row in self._stats.items():
            if bucket >= since:
                finished[outcome] = finished.get(outcome, 0) + int(row[0])
        return Throughput(max(now - since, STATS_BUCKET_S), finished)

    async def job_stats(self, since: float) -> list[JobStats]:
        await anyio.lowlevel.checkpoint()
        start = stats_bucket(since)
        sums: dict[str, list[float]] = {}
        for (bucket, _, name, outcome), row in self._stats.items():
            if bucket < start:
                continue
            acc = sums.setdefault(name, [0, 0, 0.0, 0.0, 0.0, 0, 0.0, 0.0])
            acc[0] += row[0]
            acc[1] += row[0] if outcome in ("failed", "retried") else 0
            acc[2] += row[1]
            acc[3] += row[2]
            acc[4] += row[6]
            acc[5] += row[4]
            acc[6] += row[5]
            acc[7] = max(acc[7], row[3])
        ranked = sorted(sums.items(), key=lambda kv: (-kv[1][0], kv[0]))
        return [
            JobStats(name, int(a[0]), int(a[1]), a[2], a[3], a[4], int(a[5]), a[6], a[7])
            for name, a in ranked
        ]

    async def busy_keys(self, limit: int) -> list[BusyKey]:
        await anyio.lowlevel.checkpoint()
        by_key: dict[str, list[_Job]] = {}
        for job in sorted(self.jobs.values(), key=lambda j: j.id):
            if job.state == "running" and job.concurrency_key is not None:
                by_key.setdefault(job.concurrency_key, []).append(job)
        keys = sorted(by_key.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:limit]
        return [
            BusyKey(
                key,
                len(jobs),
                max(j.concurrency_limit or 1 for j in jobs),
                [(j.id, j.name, j.node_id) for j in jobs],
            )
            for key, jobs in keys
        ]

    async def rate_buckets(self, limit: int) -> list[RateBucket]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        rates = {
            j.rate_key: (j.rate_count or 1, j.rate_period or 0.0)
            for j in self.jobs.values()
            if j.rate_key is not None
        }
        buckets = sorted(self._rate_tat.items(), key=lambda kv: -kv[1])[:limit]
        return [RateBucket(key, *rates.get(key, (0, 0.0)), tat - now) for key, tat in buckets]
