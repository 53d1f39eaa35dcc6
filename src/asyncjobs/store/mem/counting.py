"""Counting and purging jobs in the MemoryStore, for operators (App.counts, App.purge).

Purging a pending job that has dependents settles them as Postgres does: they end
upstream_cancelled.
"""

from __future__ import annotations

import anyio
import anyio.lowlevel

from ...jobs import JobId
from ..base import ACTIVE_STATES, PENDING_STATES, PURGEABLE_STATES, TERMINAL_STATES
from .state import MemoryState


class CountingMixin(MemoryState):
    """count_jobs and purge_jobs."""

    async def count_jobs(self, queue: str | None, finished: bool) -> dict[str, int]:
        await anyio.lowlevel.checkpoint()
        counts = dict.fromkeys(ACTIVE_STATES + (TERMINAL_STATES if finished else ()), 0)
        for job in self.jobs.values():
            if job.state in counts and (queue is None or job.queue == queue):
                counts[job.state] += 1
        return counts

    async def purge_jobs(
        self, queue: str, state: str, limit: int, after: JobId | None
    ) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        if state not in PURGEABLE_STATES:
            raise ValueError(f"purge_jobs cannot delete {state!r} jobs")
        found = sorted(
            j.id
            for j in self.jobs.values()
            if j.state == state and j.queue == queue and (after is None or j.id > after)
        )[:limit]
        for job_id in found:
            job = self.jobs.pop(job_id)
            if job.unique_key is not None and self._unique.get(job.unique_key) == job_id:
                del self._unique[job.unique_key]
            if job.parked:
                self._parked.get(job.concurrency_key or "", set()).discard(job_id)
            if job_id in self._waiters:
                self._waiters.discard(job_id)
                self._emit("finished", str(job_id))
            self._parents.pop(job_id, None)
            self._steps.pop(job_id, None)
            if job.has_dependents and state in PENDING_STATES:
                job.state = "cancelled"  # as Postgres settles them: upstream_cancelled
                self._settle(job)
            if job.awaited and state in PENDING_STATES:  # its parked waiters find it gone
                self._wake_parked(job_id)
        return found
