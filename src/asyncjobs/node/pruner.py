"""The pruner: deletes finished jobs older than the retention period, in small batches.

Each batch is one short statement that skips rows another pruner holds, so pruning never
holds long locks and several nodes can prune at once. A pause between batches lets the hot
path through when there is a large backlog of history to delete.
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

import anyio

from ..errors import StoreError
from .store_errors import log_store_error

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("asyncjobs.node")

PRUNE_BATCH = 1000  # jobs deleted per statement
PAUSE_BETWEEN_BATCHES_S = 0.05
WAITER_TTL_S = 24 * 3600.0  # a registration of interest older than this is dropped


async def run_pruner(node: Node) -> None:
    settings = node.settings
    while True:
        await anyio.sleep(settings.prune_interval_s * random.uniform(0.75, 1.25))
        try:
            deleted = await prune_once(node)
        except StoreError as exc:
            log_store_error(exc, "pruning by node %s failed", node.id)
            continue
        if deleted:
            log.info("node %s pruned %d finished jobs", node.id, deleted)


async def prune_once(node: Node) -> int:
    """Delete every finished job past the retention period; returns how many."""
    store, retention = node.store, node.settings.retention_s
    total = 0
    while True:
        deleted = await store.prune(retention, PRUNE_BATCH)
        total += deleted
        if deleted < PRUNE_BATCH:
            break
        await anyio.sleep(PAUSE_BETWEEN_BATCHES_S)
    await store.prune_rest(retention, WAITER_TTL_S)
    return total
