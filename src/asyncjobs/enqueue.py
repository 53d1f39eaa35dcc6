"""Coalescing of concurrent ``enqueue()`` calls into one INSERT per round trip.

There is no timer and no fixed window. A call made while no write is in flight writes at once,
in the caller's own task, so a lone caller pays exactly one round trip. Calls made while a write
is in flight wait in a list; when the write returns, one flush task writes the whole list in one
statement. Under load the batches grow by themselves to what arrived during one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TypeVar

import anyio

from .errors import StoreUnavailableError
from .jobs import JobId
from .store.base import NewJob, Store

log = logging.getLogger("asyncjobs.enqueue")

T = TypeVar("T")
RETRY_DELAYS_S = (0.1, 0.5, 1.5)  # waits before the 2nd, 3rd and 4th try of a failed write


async def with_retries(write: Callable[[], Awaitable[T]]) -> T:
    """Run ``write``, again after a lost connection, a few times with backoff.

    Safe because the ids are made by the client: a write that did commit before its answer was
    lost is found, not doubled (the stores skip jobs whose id exists). After the last try, the
    ``StoreUnavailableError`` reaches the caller; the jobs may or may not be stored then.
    """
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return await write()
        except StoreUnavailableError as exc:
            if delay is None:
                raise
            log.warning("enqueue failed (%s); trying again in %.1f s", exc.why, delay)
            await anyio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


class EnqueueBatcher:
    """Writes single jobs, batching the calls that overlap in time."""

    def __init__(self, store: Store, max_batch: int) -> None:
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[NewJob, asyncio.Future[JobId]]] = []
        self._busy = False  # a write (direct or flush) is in flight
        self._flush_task: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None  # made on first drain(), inside the loop

    async def submit(self, job: NewJob) -> JobId:
        """Write one job and return its id (or the id of the unfinished job sharing its
        unique key). A lost connection is retried (``with_retries``). If the caller is
        cancelled while waiting, the job may still be written."""
        if not self._busy:
            self._busy = True
            try:
                ids = await with_retries(partial(self._store.enqueue, [job]))
            finally:
                self._busy = False
                self._start_flush_if_needed()
                self._signal_if_idle()
            return ids[0]
        future: asyncio.Future[JobId] = asyncio.get_running_loop().create_future()
        self._pending.append((job, future))
        return await future

    def _start_flush_if_needed(self) -> None:
        if self._pending and not self._busy:
            self._busy = True
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                try:
                    jobs = [job for job, _ in batch]
                    ids = await with_retries(partial(self._store.enqueue, jobs))
                except BaseException as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for (_, future), job_id in zip(batch, ids, strict=True):
                    if not future.done():
                        future.set_result(job_id)
        finally:
            self._busy = False
            self._flush_task = None
            # A cancelled flush leaves its waiters failed above; anything queued after it
            # gets a fresh flush.
            self._start_flush_if_needed()
            self._signal_if_idle()

    def _signal_if_idle(self) -> None:
        if self._idle is not None and not self._busy and not self._pending:
            self._idle.set()

    async def drain(self) -> None:
        """Wait until every submitted job is written (or has failed)."""
        while self._busy or self._pending:
            if self._idle is None or self._idle.is_set():
                self._idle = asyncio.Event()
            await self._idle.wait()
