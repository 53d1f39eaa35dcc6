"""The completer: buffers outcomes and writes them in batches, one statement per flush.

Like the enqueue path it batches by itself: outcomes that arrive while a flush is in flight go
into the next one. When the database is unreachable the buffer is kept, in order, and the
flush is retried with backoff; nothing is dropped. The store fences every outcome by
(attempt, node): a stale one is rejected and reported here, never written.
"""

from __future__ import annotations

import logging
from collections import Counter

import anyio

from ..errors import StoreError
from ..jobs import JobId
from ..store.base import Outcome, Store
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

MAX_FLUSH = 5000  # outcomes per statement, so one statement stays small
RETRY_MIN_S = 0.05
RETRY_MAX_S = 5.0


class Completer:
    def __init__(
        self,
        store: Store,
        node_id: JobId,
    ) -> None:
        self._store = store
        self.node_id = node_id  # changes when the node rejoins after being reaped
        self._buffer: list[Outcome] = []
        self._has_work = anyio.Event()
        self._idle = anyio.Event()
        self._idle.set()
        self.flushed = 0  # outcomes written, for metrics and tests
        # Keys of the buffered outcomes' jobs: their slots are free, but not yet recorded.
        self._freeing: Counter[str] = Counter()
        self._key_of: dict[tuple[JobId, int], str] = {}

    def add(self, outcome: Outcome, key: str | None = None) -> None:
        self._buffer.append(outcome)
        if key is not None:
            self._freeing[key] += 1
            self._key_of[(outcome.id, outcome.attempt)] = key
        if self._idle.is_set():
            self._idle = anyio.Event()
        self._has_work.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def freeing_keys(self) -> list[str]:
        """Concurrency keys of finished jobs whose outcomes are not written yet."""
        return list(self._freeing)

    def pending_ids(self) -> list[JobId]:
        """Jobs whose outcome is not written yet (the batch in flight included)."""
        return [outcome.id for outcome in self._buffer]

    async def run(self) -> None:
        """Flush whenever there is work, until cancelled."""
        while True:
            await self._has_work.wait()
            self._has_work = anyio.Event()
            await self._flush_all()

    async def _flush_all(self) -> None:
        delay = RETRY_MIN_S
        while self._buffer:
            batch = self._buffer[:MAX_FLUSH]
            try:
                rejected = await self._store.complete(self.node_id, batch)
            except StoreError as exc:
                # Outcomes are kept whatever the error (nothing is lost while the node lives);
                # a statement error would repeat forever, so it is logged loudly.
                log_store_error(
                    exc,
                    "cannot write %d job outcomes (keeping them, retrying in %.2f s)",
                    len(self._buffer),
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            del self._buffer[: len(batch)]
            self.flushed += len(batch) - len(rejected)
            if self._key_of:
                for o in batch:
                    key = self._key_of.pop((o.id, o.attempt), None)
                    if key is not None:
                        self._freeing[key] -= 1
                        if not self._freeing[key]:
                            del self._freeing[key]
            delay = RETRY_MIN_S
            if rejected:
                log.warning(
                    "rejected %d stale outcomes (the job moved on without this node): %s",
                    len(rejected),
                    ", ".join(str(j) for j in rejected[:10]),
                )
        self._idle.set()

    async def flush(self) -> None:
        """Write everything buffered now, in this task (``asyncjobs.testing`` drives the
        node this way, without its service loops)."""
        await self._flush_all()

    async def wait_flushed(self) -> None:
        """Wait until everything added so far is written (or rejected)."""
        if self._buffer:
            self._has_work.set()
        await self._idle.wait()
