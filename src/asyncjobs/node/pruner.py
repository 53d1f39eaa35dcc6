"""The pruner: deletes finished jobs older than the retention period, in small batches.

Each batch is one short statement that skips rows another pruner holds, so pruning never
holds long locks and several nodes can prune at once. A pause between batches lets the hot
path through when there is a large backlog of history to delete.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import anyio

from ..errors import StoreError
from ..jobs import JobId
from ..store.base import Store
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

PRUNE_BATCH = 1000  # jobs deleted per statement
PAUSE_BETWEEN_BATCHES_S = 0.05
WAITER_TTL_S = 24 * 3600.0  # a registration of interest older than this is dropped


async def run_pruner(
    store: Store, node_id: Callable[[], JobId], interval_s: float, retention_s: float
) -> None:
    """Every ``interval_s`` or so, prune what is older than ``retention_s``."""
    while True:
        await anyio.sleep(interval_s * random.uniform(0.75, 1.25))
        try:
            deleted = await prune_once(store, retention_s)
        except StoreError as exc:
            log_store_error(exc, "pruning by node %s failed", node_id())
            continue
        if deleted:
            log.info("node %s pruned %d finished jobs", node_id(), deleted)


async def prune_once(store: Store, retention: float) -> int:
    """Delete every finished job past the retention period; returns how many."""
    total = 0
    while True:
        deleted = await store.prune(retention, PRUNE_BATCH)
        total += deleted
        if deleted < PRUNE_BATCH:
            break
        await anyio.sleep(PAUSE_BETWEEN_BATCHES_S)
    await store.prune_rest(retention, WAITER_TTL_S)
    return total
