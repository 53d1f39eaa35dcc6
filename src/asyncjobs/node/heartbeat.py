"""The heartbeat: one statement per interval updates this node's own row.

Liveness is per node, not per job, so an hours-long job is never mistaken for a dead one. The
same statement returns any cancel requests for jobs on this node, which covers a NOTIFY that
was missed while the LISTEN connection was down.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio

from ..errors import StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("asyncjobs.node")


async def run_heartbeat(node: Node) -> None:
    interval = node.settings.heartbeat_interval_s
    while True:
        await anyio.sleep(interval)
        try:
            result = await node.store.heartbeat(node.id, len(node.running))
        except StoreUnavailableError as exc:
            log.warning("heartbeat of node %s failed: %s", node.id, exc.why)
            continue
        except StoreError:
            # Not worth stopping every running job for: log it loudly and try again.
            log.exception("heartbeat of node %s failed", node.id)
            continue
        if not result.alive:
            log.error(
                "node %s has no row in the nodes table any more: another node reaped it",
                node.id,
            )
        if result.cancel_requested:
            node.cancel_running(result.cancel_requested)
