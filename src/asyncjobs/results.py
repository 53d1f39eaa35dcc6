"""Waiting for results: futures woken by the store's ``finished`` events.

A waiter is registered before the job is read, so an event that arrives while the read is in
flight is not missed; the caller also re-reads now and then, in case an event was lost
(a reconnect, or a job ending at the very moment the interest was registered).
"""

from __future__ import annotations

import asyncio
from typing import Any

from .errors import JobCancelledError, JobFailedError, JobLostError
from .jobs import JobId, JobRecord, JobState


class ResultWaiters:
    """The futures of callers waiting for jobs to end, by job id."""

    def __init__(self) -> None:
        self._waiters: dict[JobId, set[asyncio.Future[None]]] = {}

    def register(self, job_id: JobId) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, set()).add(future)
        return future

    def discard(self, job_id: JobId, future: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(future)
            if not waiters:
                del self._waiters[job_id]

    def finished(self, job_id: JobId) -> None:
        """The job ended: wake its waiters (they read the outcome themselves)."""
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    def wake_all(self) -> None:
        """Events may have been missed (or the app is stopping): everyone re-checks."""
        for waiters in self._waiters.values():
            for future in waiters:
                if not future.done():
                    future.set_result(None)


def result_of(record: JobRecord) -> Any:
    """A finished job's result, or the exception that says how it ended."""
    if record.state is JobState.SUCCEEDED:
        return record.result
    if record.state is JobState.FAILED:
        raise JobFailedError(record.id, record.name, record.error)
    if record.state is JobState.CANCELLED:
        raise JobCancelledError(record.id, record.name, record.reason)
    raise JobLostError(record.id, record.name, record.reason)
