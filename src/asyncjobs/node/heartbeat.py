"""The heartbeat: one statement per interval updates this node's own row.

Liveness is per node, not per job, so an hours-long job is never mistaken for a dead one. The
same statement returns any cancel requests for jobs on this node, which covers a NOTIFY that
was missed while the LISTEN connection was down.

When a heartbeat fails, the next attempts come quickly (with backoff up to the interval), so
that a node cut off from the database resumes soon after it is back. The node stops claiming
when it has gone ``node_timeout_s`` without a heartbeat (see Node.may_claim), and if it learns
it was reaped meanwhile, it rejoins as a new node.
"""

from __future__ import annotations

import logging
from typing import Protocol

import anyio

from ..errors import StoreError, ValueRejectedError
from ..jobs import JobId
from ..store.base import HeartbeatResult, Store
from .stats import NodeStats
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

RETRY_MIN_S = 0.1


class BeatingNode(Protocol):
    """What the heartbeat needs from its node (``Node`` is one)."""

    @property
    def id(self) -> JobId: ...

    @property
    def store(self) -> Store: ...

    @property
    def stats(self) -> NodeStats:
        """The statistics each beat carries."""

    def load(self) -> tuple[int, int]:
        """How many jobs it runs, and how many pool workers it has."""

    def heartbeat_succeeded(self) -> None: ...

    def heartbeat_failed(self) -> None: ...

    async def rejoin(self) -> None:
        """It was reaped: stop its jobs and register again under a new id."""

    def cancel_running(self, job_ids: list[JobId]) -> None: ...


async def run_heartbeat(node: BeatingNode, interval: float) -> None:
    wait = interval
    while True:
        await anyio.sleep(wait)
        try:
            result = await beat(node)
        except StoreError as exc:
            log_store_error(exc, "heartbeat of node %s failed", node.id)
            node.heartbeat_failed()
            wait = min(interval, RETRY_MIN_S if wait >= interval else wait * 2)
            continue
        wait = interval
        if not result.alive:
            try:
                await node.rejoin()
            except StoreError as exc:
                # Registering the new id failed: the next beat finds that id unknown (not
                # alive) and rejoins again; the orphaned jobs were already stopped.
                log_store_error(exc, "node %s could not rejoin yet", node.id)
                wait = RETRY_MIN_S
            continue
        node.heartbeat_succeeded()
        if result.cancel_requested:
            node.cancel_running(result.cancel_requested)


async def beat(node: BeatingNode) -> HeartbeatResult:
    """One heartbeat, carrying the statistics since the last one (given back if it fails)."""
    running, workers = node.load()
    rows = node.stats.take()
    try:
        return await node.store.heartbeat(node.id, running, workers, rows)
    except ValueRejectedError as exc:
        if not rows:
            raise
        refused = exc
    except BaseException:
        node.stats.give_back(rows)
        raise
    # Postgres refused a value in a statistics row. Liveness must not wait for statistics:
    # the beat goes alone, then the rows in halves, until the refused ones are found and
    # dropped (each row is added once, so halves sum as the whole would).
    log.error("node %s: Postgres refused its statistics (%s)", node.id, refused.detail)
    pending = [rows]
    try:
        result = await node.store.heartbeat(node.id, running, workers)
        while pending:
            part = pending[-1]
            try:
                await node.store.heartbeat(node.id, running, workers, part)
            except ValueRejectedError:
                pending.pop()
                if len(part) == 1:
                    log.error("dropped the statistics row %s, which Postgres refused", part[0])
                else:
                    middle = len(part) // 2
                    pending += [part[middle:], part[:middle]]
                continue
            pending.pop()
    except BaseException:
        node.stats.give_back([r for part in pending for r in part])
        raise
    return result
