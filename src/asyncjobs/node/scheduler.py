"""The scheduler: fires the app's recurring schedules, on every node, with no leader.

Each node keeps, per schedule, the next fire time it expects, sleeps until the earliest one
(at most a poll interval), then asks the store to fire what is due. The store decides under
the schedule's lock, on the stored state (schedules.plan), so whichever node gets there first
fires a fire time and the others find it handled; each node then moves on to the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

import anyio

from ..clock import Clock, to_datetime
from ..errors import StoreError
from ..schedules import ScheduleDef
from ..store.base import Store
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

RETRY_S = 1.0  # after a failed attempt to fire a schedule


def served(schedules: Iterable[ScheduleDef], queues: Collection[str]) -> list[ScheduleDef]:
    """The schedules a node serving ``queues`` fires: those whose runs go to one of them."""
    return [s for s in schedules if s.template.queue in queues]


async def run_scheduler(
    store: Store, clock: Clock, schedules: list[ScheduleDef], poll_interval_s: float
) -> None:
    """Fire ``schedules`` when due, until cancelled."""
    if not schedules:
        return
    await _sync(store, clock, schedules)
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
                log_store_error(exc, "cannot fire schedule %s", defn.name)
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
                log_store_error(
                    exc, "cannot queue the waiting runs of schedules %s", ",".join(queued)
                )
        wait = min(due_at.values()) - clock.time()
        await anyio.sleep(min(max(wait, 0.0), poll_interval_s))


async def _sync(store: Store, clock: Clock, schedules: list[ScheduleDef]) -> None:
    """Record the declarations in the store, retrying until the database answers."""
    while True:
        try:
            for defn in schedules:
                await store.sync_schedule(defn, clock.time())
            return
        except StoreError as exc:
            log_store_error(exc, "cannot record the schedule declarations")
            await anyio.sleep(RETRY_S)


def _when(ts: float) -> str:
    return to_datetime(ts).isoformat(timespec="seconds")
