"""The completer: buffers outcomes and writes them in batches, one statement per flush.

Like the enqueue path it batches by itself: outcomes that arrive while a flush is in flight go
into the next one. When the database is unreachable the buffer is kept, in order, and the
flush is retried with backoff; nothing is dropped. The store fences every outcome by
(attempt, node): a stale one is rejected and reported here, never written.

A batch Postgres refuses for a value it carries (``ValueRejectedError``: sending it again
would fail again) is written in halves until the refused outcome is alone, and that one is
replaced by a failure saying why. The node makes every outcome storable before it gets here
(serialization, storable); this is the defence behind that, so that one job's value can
never hold back the outcomes of the jobs written with it.
"""

from __future__ import annotations

import logging
from collections import Counter

import anyio
import orjson

from ..errors import StoreError, ValueRejectedError, error_fields, qualified_name
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
            written: list[int] = [0]  # how many leading outcomes of the batch are written
            rejected: list[JobId] = []
            try:
                try:
                    rejected += await self._store.complete(self.node_id, batch)
                    written[0] = len(batch)
                except ValueRejectedError as exc:
                    await self._isolate(batch, exc, written, rejected)
            except StoreError as exc:
                # Outcomes are kept whatever the error (nothing is lost while the node lives);
                # a statement error would repeat forever, so it is logged loudly.
                self._done(batch[: written[0]], rejected)
                log_store_error(
                    exc,
                    "cannot write %d job outcomes (keeping them, retrying in %.2f s)",
                    len(self._buffer),
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            self._done(batch, rejected)
            delay = RETRY_MIN_S
        self._idle.set()

    async def _isolate(
        self,
        batch: list[Outcome],
        exc: ValueRejectedError,
        written: list[int],
        rejected: list[JobId],
    ) -> None:
        """Write a batch that Postgres refused for a value it carried, in halves, until the
        refused outcomes are alone; each of those is replaced by a failure that says why.

        The outcomes written with a refused one are kept: one job's unstorable result must
        not fail, re-run or lose the others. Halves go in order, so what is written is always
        a prefix of the batch (``written``), even when an outage interrupts the search.
        """
        if len(batch) == 1:
            substitute = refused_outcome(batch[0], exc)
            log.error(
                "the outcome of job %s was refused by Postgres (%s); the job is failed instead",
                batch[0].id,
                exc.detail,
            )
            rejected += await self._store.complete(self.node_id, [substitute])
            written[0] += 1
            return
        middle = len(batch) // 2
        for part in (batch[:middle], batch[middle:]):
            try:
                rejected += await self._store.complete(self.node_id, part)
            except ValueRejectedError as refused:
                await self._isolate(part, refused, written, rejected)
            else:
                written[0] += len(part)

    def _done(self, batch: list[Outcome], rejected: list[JobId]) -> None:
        """Forget the outcomes of ``batch`` (the buffer's first ones): they are written, or
        ``rejected`` as stale."""
        del self._buffer[: len(batch)]
        self.flushed += len(batch) - len(rejected)
        if self._key_of:
            for o in batch:
                key = self._key_of.pop((o.id, o.attempt), None)
                if key is not None:
                    self._freeing[key] -= 1
                    if not self._freeing[key]:
                        del self._freeing[key]
        if rejected:
            log.warning(
                "rejected %d stale outcomes (the job moved on without this node): %s",
                len(rejected),
                ", ".join(str(j) for j in rejected[:10]),
            )

    async def flush(self) -> None:
        """Write everything buffered now, in this task (``asyncjobs.testing`` drives the
        node this way, without its service loops)."""
        await self._flush_all()

    async def wait_flushed(self) -> None:
        """Wait until everything added so far is written (or rejected)."""
        if self._buffer:
            self._has_work.set()
        await self._idle.wait()


REFUSED_REASON = "outcome refused by Postgres"


def refused_outcome(outcome: Outcome, exc: ValueRejectedError) -> Outcome:
    """What is written instead of an outcome Postgres refused: the attempt failed, with a
    message that says why and what was lost (its result, or its error's text), and no value
    that could be refused in turn."""
    message = (
        f"asyncjobs could not store this attempt's outcome ({outcome.state}): {exc}. The job "
        "is failed instead, so that the outcomes written with it are kept; what it returned "
        "or raised is not stored."
    )
    error = orjson.dumps(error_fields(qualified_name(ValueRejectedError), message, ""))
    return Outcome(
        outcome.id, outcome.attempt, "failed", None, error, outcome.finished_at, None,
        REFUSED_REASON, outcome.wall_s, outcome.cpu_s,
    )  # fmt: skip
