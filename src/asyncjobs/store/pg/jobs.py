"""JobsMixin: the producers' side of PostgresStore (enqueue, get, cancel, list, retry).

Hot paths are one statement per batch (see sql/queries.sql).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any

import asyncpg

from ...clock import to_datetime
from ...jobs import JobId, JobRecord, JobState
from ..base import PLAIN_FIELDS, JobQuery, NewJob, record_from_row
from .base import PgStoreBase

_JOB_COLUMNS = ("id", "name", "queue", "priority", "state", "args", "run_at", "max_attempts")
_BULK_COLUMNS = (*_JOB_COLUMNS, "trace")
_TRACE = NewJob._fields.index("trace")  # the plain statements take it after PLAIN_FIELDS


class JobsMixin(PgStoreBase):
    """Producers: writing jobs, and reading, cancelling, listing and retrying them."""

    async def enqueue(self, jobs: Sequence[NewJob]) -> list[JobId]:
        if not jobs:
            return []
        # Jobs without unique keys take a plain INSERT (cheaper than ON CONFLICT). If one of
        # them exists already (a re-sent insert), that INSERT fails whole, writing nothing, and
        # the batch goes again through the ON CONFLICT variant, which skips it. A single
        # enqueue (the common case) takes scalar parameters, not unnest arrays. A job with a
        # concurrency key or a rate limit needs the columns only insert_jobs_unique writes.
        # Every statement writes the trace context (null unless tracing is on).
        plain_params: tuple[Any, ...]
        keyed_params: tuple[Any, ...]
        if len(jobs) == 1 and not jobs[0].limited:
            plain, keyed = "insert_job", "insert_job_unique"
            job = jobs[0]
            plain_params = keyed_params = (*job[:PLAIN_FIELDS], job.trace)
        else:
            plain, keyed = "insert_jobs", "insert_jobs_unique"
            keyed_params = tuple(zip(*jobs, strict=True))
            plain_params = (*keyed_params[:PLAIN_FIELDS], keyed_params[_TRACE])
        straight_to_keyed = any(j.unique_key is not None or j.limited for j in jobs)
        async with self._errors(), self._enqueue_lane.connection() as con:
            rows = None
            if not straight_to_keyed:
                with suppress(asyncpg.UniqueViolationError):  # then the ON CONFLICT variant
                    rows = await con.fetch(self.q[plain], *plain_params)
            if rows is None:
                rows = await con.fetch(self.q[keyed], *keyed_params)
        if len(rows) == len(jobs):
            return [j.id for j in jobs]
        async with self._errors():
            return await self._resolve_skipped(jobs, {r[0] for r in rows})

    async def enqueue_bulk(self, jobs: Iterable[NewJob]) -> None:
        ready_queues: set[str] = set()
        earliest_scheduled: float | None = None
        times: dict[float, datetime] = {}  # most jobs of a batch share one run_at

        def records() -> Iterator[tuple[Any, ...]]:
            # Consumed by COPY while it streams: each job is prepared (and validated) while
            # the server ingests the previous ones. A plain generator: asyncpg consumes it in
            # a tight loop and writes whenever its buffer fills; an async one would cost a
            # coroutine resume per row.
            # A NewJob unpacked into locals: at 20,000 jobs, attribute reads cost milliseconds.
            nonlocal earliest_scheduled
            for (
                job_id, name, queue, priority, state, args, run_at, max_attempts, unique_key,
                concurrency_key, _, rate_key, _, _, trace,
            ) in jobs:  # fmt: skip
                if unique_key is not None or concurrency_key is not None or rate_key is not None:
                    raise ValueError("enqueue_bulk cannot honour unique keys or limits")
                when = times.get(run_at)
                if when is None:
                    when = times[run_at] = to_datetime(run_at)
                if state == "queued":
                    ready_queues.add(queue)
                elif earliest_scheduled is None or run_at < earliest_scheduled:
                    earliest_scheduled = run_at
                yield job_id, name, queue, priority, state, args, when, max_attempts, trace

        async with self._errors(), self._enqueue_lane.connection() as con, con.transaction():
            await con.copy_records_to_table(
                self.table, schema_name=self.schema, columns=_BULK_COLUMNS, records=records()
            )
            await con.execute(self.q["notify_new"], sorted(ready_queues), earliest_scheduled)

    async def _resolve_skipped(self, jobs: Sequence[NewJob], inserted: set[JobId]) -> list[JobId]:
        skipped = [j for j in jobs if j.id not in inserted]
        rows = await self.pool.fetch(
            self.q["find_existing"], [j.id for j in skipped], [j.unique_key for j in skipped]
        )
        existing = {r["requested"]: r["existing"] for r in rows}
        out: list[JobId] = []
        for job in jobs:
            if job.id in inserted:
                out.append(job.id)
                continue
            found = existing.get(job.id)
            if found is None:
                # The job holding the unique key finished between the insert and this lookup.
                retried = await self.enqueue([job])
                found = retried[0]
            out.append(found)
        return out

    async def get(self, job_id: JobId) -> JobRecord | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["get_job"], job_id)
        return None if row is None else record_from_row(row)

    async def cancel(self, job_id: JobId, reason: str, now: float) -> JobState | None:
        async def body(con: asyncpg.Connection) -> Any:
            row = await con.fetchrow(self.q["cancel"], job_id, reason, now)
            assert row is not None
            if row["settle"]:  # its dependents can never run now
                await con.execute(self.q["settle_jobs"], [job_id], ["cancelled"])
            return row["state"]

        state = await self._transaction(body)
        return None if state is None else JobState(state)

    async def list_jobs(self, query: JobQuery) -> list[JobRecord]:
        sql = self._list_by_state.get(query.state or "", self.q["list_jobs"])
        async with self._errors():
            rows = await self.pool.fetch(sql, *query)
        return [record_from_row(r) for r in rows]

    async def retry_jobs(self, job_ids: Sequence[JobId], now: float) -> list[JobId]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["retry_jobs"], list(job_ids), now)
        return [r["id"] for r in rows]

    async def find_jobs(self, name: str, limit: int) -> list[JobRecord]:
        async with self._errors():
            rows = await self.pool.fetch(self.q["find_jobs"], name, limit)
        return [record_from_row(r) for r in rows]

    async def watch(self, job_id: JobId) -> JobRecord | None:
        async with self._errors():
            row = await self.pool.fetchrow(self.q["watch_job"], job_id)
        return None if row is None else record_from_row(row)
