"""The reaper: any live node takes over the jobs of nodes that stopped heartbeating.

Liveness is per node, not per job: an hours-long job on a node that keeps heartbeating is
never touched. Every node runs a reaper; they race harmlessly, because a node row is reaped by
whichever reaper locks it first (SKIP LOCKED) and only once.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import anyio

from ..clock import to_datetime
from ..errors import StoreError
from ..jobs import JobId
from ..store.base import Store
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

REAP_BATCH = 100  # most nodes reaped in one statement


async def run_reaper(
    store: Store,
    node_id: Callable[[], JobId],
    interval_s: float,
    node_timeout_s: float,
    may_reap: Callable[[], bool] = lambda: True,
) -> None:
    """Every ``interval_s`` or so, reap the nodes silent for over ``node_timeout_s``.
    ``node_id`` gives this node's id, which changes when it rejoins; ``may_reap`` says
    whether this node has been in touch long enough to judge others (liveness.py)."""
    while True:
        # Spread over the interval, so that the nodes of a cluster do not all look at once.
        await anyio.sleep(interval_s * random.uniform(0.75, 1.25))
        if not may_reap():
            continue
        try:
            reaped = await store.reap(node_id(), node_timeout_s, REAP_BATCH)
        except StoreError as exc:
            log_store_error(exc, "reaper of node %s failed", node_id())
            continue
        for dead in reaped:
            last = to_datetime(dead.heartbeat_at).isoformat(timespec="seconds")
            log.warning(
                "reaped node %s (last heartbeat %s): %d jobs re-queued, %d lost, %d cancelled",
                dead.node_id, last, dead.requeued, dead.lost, dead.cancelled,
            )  # fmt: skip
