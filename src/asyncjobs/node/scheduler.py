"""The scheduler: fires the app's recurring schedules, on every node, with no leader.

Each node keeps, per schedule, the next fire time it expects, sleeps until the earliest one
(at most a poll interval), then asks the store to fire what is due. The store decides under
the schedule's lock, on the stored state (schedules.plan), so whichever node gets there first
fires a fire time and the others find it handled; each node then moves on to the next one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio

from ..errors import StoreError, StoreUnavailableError

if TYPE_CHECKING:
    from ..schedules import ScheduleDef
    from .node import Node

log = logging.getLogger("asyncjobs.node")

RETRY_S = 1.0  # after a failed attempt to fire a schedule


async def run_scheduler(node: Node) -> None:
    schedules = [s for s in node.app.schedules.values() if s.template.queue in node.queue_limit]
    if not schedules:
        return
    clock, store = node.clock, node.store
    await _sync(node, schedules)
    queued = [s.name for s in schedules if s.overlap == "queue"]
    due_at = {s.name: 0.0 for s in schedules}  # fire each one's backlog (if any) at once
    while True:
        now = clock.time()
        for defn in schedules:
            if due_at[defn.name] > now:
                continue
            try:
                done = await store.fire_schedule(defn, now)
            except StoreError as exc:
                _log_failure(defn.name, exc)
                due_at[defn.name] = now + RETRY_S
                continue
            if done is not None and (done.runs or done.missed or done.skipped):
                # Routine fires are debug; missed or skipped fire times are worth a warning.
                level = logging.WARNING if done.missed or done.skipped else logging.DEBUG
                log.log(
                    level,
                    "schedule %s: %d run(s) for fire time(s) up to %s; %d missed, %d skipped",
                    defn.name, len(done.runs), _when(done.last_fire_at), done.missed,
                    done.skipped,
                )  # fmt: skip
            nxt = done.next_fire_at if done is not None else defn.next_fire_after(now)
            due_at[defn.name] = nxt if nxt is not None else float("inf")
        if queued:
            try:
                await store.release_waiting(queued)
            except StoreError as exc:
                _log_failure(",".join(queued), exc)
        wait = min(due_at.values()) - clock.time()
        await anyio.sleep(min(max(wait, 0.0), node.settings.poll_interval_s))


async def _sync(node: Node, schedules: list[ScheduleDef]) -> None:
    """Record the declarations in the store, retrying until the database answers."""
    while True:
        try:
            for defn in schedules:
                await node.store.sync_schedule(defn, node.clock.time())
            return
        except StoreError as exc:
            _log_failure("declarations", exc)
            await anyio.sleep(RETRY_S)


def _log_failure(what: str, exc: StoreError) -> None:
    if isinstance(exc, StoreUnavailableError):
        log.warning("cannot fire schedule %s: %s", what, exc.why)
    else:
        log.exception("firing schedule %s failed", what)


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")
