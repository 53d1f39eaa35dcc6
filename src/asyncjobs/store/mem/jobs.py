"""Jobs in the MemoryStore: enqueueing, reading, cancelling, retrying and watching them.

The producers' and readers' side of the Store protocol. Unique keys are held in
MemoryState._unique while a job is unfinished, as Postgres's partial unique index does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import anyio
import anyio.lowlevel

from ...jobs import JobId, JobRecord, JobState
from ..base import PENDING_STATES, JobQuery, NewJob
from ..refusals import check_jobs, check_text
from .state import _ACTIVE, MemoryState, _Job, _record


class JobsMixin(MemoryState):
    """enqueue, enqueue_bulk, get, cancel, list_jobs, retry_jobs, find_jobs and watch."""

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        check_jobs(jobs)
        now = time.time()
        out: list[JobId] = []
        woken: set[str] = set()
        earliest: float | None = None
        for new in jobs:
            if new.id in self.jobs:
                out.append(new.id)
                continue
            if new.unique_key is not None and new.unique_key in self._unique:
                out.append(self._unique[new.unique_key])
                continue
            job = _Job(
                new.id,
                new.name,
                new.queue,
                new.priority,
                new.state,
                new.args,
                new.run_at,
                new.max_attempts,
                new.unique_key,
                now,
                trace=new.trace,
            ).limit_like(new)
            self.jobs[job.id] = job
            if job.unique_key is not None:
                self._unique[job.unique_key] = job.id
            if job.state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            else:
                self._make_scheduled(job)
                earliest = job.run_at if earliest is None else min(earliest, job.run_at)
            out.append(job.id)
        self._wake(woken, earliest)
        return out

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        batch = list(jobs)  # an exception while preparing leaves nothing written
        await self.enqueue(batch)

    async def get(self, job_id: JobId) -> JobRecord | None:
        await anyio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        return None if job is None else _record(job)

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        await anyio.lowlevel.checkpoint()
        check_text((reason,))
        job = self.jobs.get(job_id)
        if job is None:
            return None
        if job.state in PENDING_STATES:
            job.reason = reason
            job.finished_at = now
            job.cancel_requested = False
            self._end(job, "cancelled")
        elif job.state == "running":
            job.reason = reason
            job.cancel_requested = True
            self._emit("cancel", str(job.id))
        return JobState(job.state)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        check_text((query.queue, query.name))
        found = [
            j
            for j in sorted(self.jobs.values(), key=lambda j: j.id, reverse=True)
            if (query.state is None or j.state == query.state)
            and (query.queue is None or j.queue == query.queue)
            and (query.name is None or j.name == query.name)
            and (query.since is None or j.id >= query.since)
            and (query.before is None or j.id < query.before)
        ]
        return [_record(j) for j in found[: query.limit]]

    async def retry_jobs(self, job_ids: Sequence[JobId], now: float) -> list[JobId]:
        await anyio.lowlevel.checkpoint()
        again: list[JobId] = []
        for job_id in job_ids:
            job = self.jobs.get(job_id)
            if job is None or job.state not in ("failed", "lost"):
                continue
            if job.unique_key is not None:
                if job.unique_key in self._unique:
                    continue  # another unfinished job holds its unique key
                self._unique[job.unique_key] = job.id
            job.run_at, job.finished_at, job.error, job.result = now, None, None, None
            job.reason, job.parked = "retried by request", False
            job.max_attempts = max(job.max_attempts, job.attempt + 1)
            self._make_ready(job)
            again.append(job_id)
        self._wake(self.jobs[i].queue for i in again)
        return again

    async def find_jobs(self, name: str, limit: int) -> list[JobRecord]:
        await anyio.lowlevel.checkpoint()
        check_text((name,))
        found = sorted((j for j in self.jobs.values() if j.name == name), key=lambda j: j.id)
        return [_record(j) for j in found[:limit]]

    async def watch(self, job_id: JobId) -> JobRecord | None:
        await anyio.lowlevel.checkpoint()
        job = self.jobs.get(job_id)
        if job is None:
            return None
        record = _record(job)
        if job.state in _ACTIVE:
            self._waiters.add(job.id)
        return record
