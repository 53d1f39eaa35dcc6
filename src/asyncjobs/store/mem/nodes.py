"""Nodes and the reaper in the MemoryStore: registering, heartbeats, reaping and pruning.

A reaped node's record is kept, marked, as in Postgres, so that a node that was only cut off
learns it was reaped and monitoring can show it. Reaping frees the slots its jobs held, so
this mixin builds on the limits'.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from ...clock import to_datetime
from ...jobs import JobId
from ..base import TERMINAL_STATES, HeartbeatResult, NodeInfo, ReapedNode, StatsRow, add_stats
from ..refusals import check_stats, check_text
from .state import _Node
from .steps import StepsMixin


class NodesMixin(StepsMixin):
    """register_node, heartbeat, deregister_node, reap, prune and prune_rest."""

    async def register_node(self, node: NodeInfo) -> None:
        await anyio.lowlevel.checkpoint()
        check_text((node.host, node.version, *node.queues, *node.durable))
        self.nodes[node.id] = _Node(node, time.time())

    async def heartbeat(
        self, node_id: JobId, running: int, workers: int = 0, stats: Sequence[StatsRow] = ()
    ) -> HeartbeatResult:
        await anyio.lowlevel.checkpoint()
        check_stats(stats)
        for r in stats:  # the node's statistics, written even if it was reaped
            add_stats(self._stats.setdefault((r.bucket, node_id, r.name, r.outcome), [0] * 7), r)
        node = self.nodes.get(node_id)
        if node is None or node.reaped_at is not None:
            return HeartbeatResult(False, [])
        node.heartbeat_at = time.time()
        node.running = running
        node.workers = workers
        cancels = [
            j.id
            for j in self.jobs.values()
            if j.node_id == node_id and j.state == "running" and j.cancel_requested
        ]
        return HeartbeatResult(True, cancels)

    async def deregister_node(self, node_id: JobId) -> None:
        await anyio.lowlevel.checkpoint()
        node = self.nodes.get(node_id)
        if node is not None:
            node.stopped_at = time.time()
            node.running = 0

    async def reap(self, reaper_id: JobId, node_timeout_s: float, limit: int) -> list[ReapedNode]:
        await anyio.lowlevel.checkpoint()
        now = time.time()
        dead = sorted(
            (
                n
                for n in self.nodes.values()
                if n.reaped_at is None
                and n.info.id != reaper_id  # a node running this is alive: never itself
                and (n.heartbeat_at < now - node_timeout_s or n.stopped_at is not None)
            ),
            key=lambda n: n.heartbeat_at,
        )[:limit]
        out: list[ReapedNode] = []
        woken: set[str] = set()
        freed: list[str] = []
        for node in dead:
            node.reaped_at, node.reaped_by, node.running = now, reaper_id, 0
            stamp = to_datetime(node.heartbeat_at)
            reason = (
                f"node {node.info.id} stopped heartbeating at "
                f"{stamp.strftime('%Y-%m-%dT%H:%M:%S.')}{stamp.microsecond // 1000:03d}Z"
            )
            counts = {"queued": 0, "lost": 0, "cancelled": 0}
            for job in list(self.jobs.values()):
                if job.node_id != node.info.id or job.state != "running":
                    continue
                in_doubt = self._step_in_doubt(job)
                durable = job.name in node.info.durable or self._completed_a_step(job)
                if job.cancel_requested:
                    job.finished_at = now
                    self._end(job, "cancelled")
                elif in_doubt is not None:
                    job.reason = f"{in_doubt} was running on node {node.info.id} when it died"
                    job.finished_at = now
                    self._end(job, "lost")
                elif durable or job.attempt < job.max_attempts:
                    job.reason, job.run_at, job.finished_at = reason, now, None
                    if durable:  # a resume is not a retry
                        job.max_attempts = max(job.max_attempts, job.attempt + 1)
                    self._make_ready(job)
                    woken.add(job.queue)
                else:
                    job.reason, job.finished_at = reason, now
                    self._end(job, "lost")
                if job.concurrency_key is not None:
                    freed.append(job.concurrency_key)  # the slot it held is free
                counts[job.state] += 1
            requeued, lost, cancelled = counts["queued"], counts["lost"], counts["cancelled"]
            out.append(ReapedNode(node.info.id, node.heartbeat_at, requeued, lost, cancelled))
        self._wake(woken)
        self._unpark(freed)
        return out

    async def prune(self, retention_s: float, limit: int) -> int:
        await anyio.lowlevel.checkpoint()
        cutoff = time.time() - retention_s
        old = [
            job.id
            for job in self.jobs.values()
            if job.state in TERMINAL_STATES
            and job.finished_at is not None
            and job.finished_at < cutoff
        ][:limit]
        for job_id in old:
            del self.jobs[job_id]
            self._waiters.discard(job_id)
            self._parents.pop(job_id, None)  # a finished job never needs its edges again
            self._children.pop(job_id, None)
            self._steps.pop(job_id, None)
        return len(old)

    async def prune_rest(self, retention_s: float, waiter_ttl_s: float) -> None:
        await anyio.lowlevel.checkpoint()
        cutoff = time.time() - retention_s
        for node_id, node in list(self.nodes.items()):
            ended = node.reaped_at if node.reaped_at is not None else node.stopped_at
            if ended is not None and ended < cutoff:
                del self.nodes[node_id]
        for key in [k for k in self._stats if k[0] < cutoff]:
            del self._stats[key]
        in_use = {j.workflow_id for j in self.jobs.values()}
        for workflow_id, workflow in list(self.workflows.items()):
            if workflow.created_at < cutoff and workflow_id not in in_use:
                del self.workflows[workflow_id]
