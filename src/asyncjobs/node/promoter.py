"""The promoter: moves scheduled jobs (delayed, or waiting for a retry) to queued when due.

Every node runs one; they race harmlessly (SKIP LOCKED). Each sleeps until the earliest known
due time, capped by the poll interval, and is woken early when a NOTIFY announces an earlier
scheduled job. So a job with ``delay=2`` starts about 2 s later, not at the next poll.
"""

from __future__ import annotations

import math

import anyio

from ..clock import Clock
from ..errors import StoreError
from ..store.base import Store
from .store_errors import log_store_error

PROMOTE_BATCH = 1000


class Promoter:
    def __init__(self, store: Store, clock: Clock, poll_interval_s: float) -> None:
        self._store = store
        self._clock = clock
        self._poll = poll_interval_s
        self._next_due = 0.0  # epoch seconds; 0 means "check now"
        self._wake = anyio.Event()

    def due_at(self, when: float) -> None:
        """Something is due at ``when``: make sure we look no later than that."""
        if when < self._next_due:
            self._next_due = when
            self._wake.set()

    async def run(self) -> None:
        clock, poll = self._clock, self._poll
        while True:
            now = clock.time()
            if now >= self._next_due:
                # Cleared before the query: a NOTIFY arriving during it lowers this again, and
                # the min() below keeps whichever due time is earlier.
                self._next_due = math.inf
                try:
                    result = await self._store.promote_due(now, PROMOTE_BATCH)
                except StoreError as exc:
                    log_store_error(exc, "cannot promote scheduled jobs")
                    self._next_due = now + poll
                    continue
                if result.moved >= PROMOTE_BATCH:
                    continue  # more are due right now
                if result.next_run_at is not None:
                    self._next_due = min(self._next_due, result.next_run_at)
            self._wake = anyio.Event()
            wait = min(self._next_due - clock.time(), poll)
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self._wake.wait()
            if clock.time() - now >= poll:
                self._next_due = min(self._next_due, 0.0)  # the poll fallback
