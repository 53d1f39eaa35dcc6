"""``AsyncResult`` and ``GroupResult``: Celery's result handles, over ``app.result`` and
``app.get``. The blocking forms (``get()``, ``state``, ``ready()``...) go through the sync
bridge; from async code, await the ``a``-forms (``await result.aget()``, ``astate()``).

States are Celery's names for asyncjobs' states: PENDING (scheduled, waiting, queued),
STARTED (running: asyncjobs always knows), RETRY (scheduled again after a failed attempt),
SUCCESS, FAILURE (failed or lost), REVOKED (cancelled).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import JobFailedError, JobNotFoundError, JobOutcomeError
from ..jobs import JobId, JobRecord, JobState, coerce_job_id

if TYPE_CHECKING:
    from .app import Celery

PENDING, STARTED, RETRY, SUCCESS, FAILURE, REVOKED = (
    "PENDING", "STARTED", "RETRY", "SUCCESS", "FAILURE", "REVOKED",
)  # fmt: skip
READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})


def celery_state(record: JobRecord | None) -> str:
    if record is None:
        return PENDING  # as Celery says of an id it does not know
    state = record.state
    if state is JobState.SUCCEEDED:
        return SUCCESS
    if state in (JobState.FAILED, JobState.LOST):
        return FAILURE
    if state is JobState.CANCELLED:
        return REVOKED
    if state is JobState.RUNNING:
        return STARTED
    if state is JobState.SCHEDULED and record.attempt > 0 and record.error is not None:
        return RETRY
    return PENDING


class AsyncResult:
    """A job's result handle: ``.id``, ``get(timeout=)`` / ``await aget(timeout=)``,
    ``.state`` / ``await astate()``, ``ready()``, ``successful()``, ``failed()``,
    ``revoke()``."""

    def __init__(
        self, id: JobId | str, app: Celery, write: asyncio.Task[Any] | None = None
    ) -> None:
        self.job_id: JobId = coerce_job_id(id)  # asyncjobs' id (a UUID)
        self.id = str(self.job_id)  # Celery's task id is a string (JSON-ready, as in Celery)
        self.app = app
        self._write = write  # the job's write, when delay() returned before it (bridge.py)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.job_id == self.job_id

    def __hash__(self) -> int:
        return hash(self.job_id)

    # -- async --------------------------------------------------------------------------------

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The result, once the job has ended. A failure raises ``JobFailedError`` (its
        ``error_type`` names the task's exception), a cancel ``JobCancelledError``, a lost
        job ``JobLostError``; with ``propagate=False`` the error is returned instead."""
        if self._write is not None:
            await self._write  # raises what the write raised (the job was not stored)
        try:
            return await self.app.result(self.job_id, timeout=timeout)
        except JobOutcomeError as exc:
            if propagate:
                raise
            return exc

    async def arecord(self) -> JobRecord | None:
        try:
            return await self.app.get(self.job_id)
        except JobNotFoundError:
            return None

    async def astate(self) -> str:
        return celery_state(await self.arecord())

    async def arevoke(self, terminate: bool = False) -> None:
        """Cancel the job (a running one too: ``terminate`` is how asyncjobs always does it)."""
        await self.app.cancel(self.job_id, reason="revoked")

    # -- blocking -------------------------------------------------------------------------------

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The result, blocking; in the app's own event loop, an awaitable of it
        (``await result.get(timeout=)``)."""
        if self.app.bridge.in_home_loop():
            return self.aget(timeout, propagate)
        if self._write is not None:  # made in the app's loop, read from another thread
            self.app.bridge.call("AsyncResult.get()", lambda _: _wait_for(self._write))
        return self.app.bridge.call(
            "AsyncResult.get()", lambda twin: _get(twin, self.job_id, timeout, propagate)
        )

    @property
    def state(self) -> str:
        return celery_state(self._record())

    status = state

    def ready(self) -> bool:
        return self.state in READY_STATES

    def successful(self) -> bool:
        return self.state == SUCCESS

    def failed(self) -> bool:
        return self.state == FAILURE

    @property
    def result(self) -> Any:
        """The return value, the error of a failed job (as ``JobFailedError``), or None."""
        record = self._record()
        if record is None or not record.state.is_terminal:
            return None
        if record.state is JobState.SUCCEEDED:
            return record.result
        return JobFailedError(record.id, record.name, record.error)

    @property
    def traceback(self) -> str | None:
        record = self._record()
        return None if record is None or not record.error else record.error.get("traceback")

    def revoke(self, terminate: bool = False) -> None:
        self.app.bridge.call(
            "AsyncResult.revoke()", lambda twin: twin.cancel(self.job_id, reason="revoked")
        )

    def forget(self) -> None:
        """Nothing to do: a job's row is pruned after ``retention_s``."""

    def _record(self) -> JobRecord | None:
        return self.app.bridge.call("AsyncResult.state", lambda twin: _record(twin, self.job_id))


class GroupResult:
    """The results of a group's members, in order: ``get()`` / ``await aget()`` is a list."""

    def __init__(self, results: Sequence[AsyncResult], app: Celery) -> None:
        self.results = list(results)
        self.app = app
        self.id = self.results[0].id if self.results else None

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[Any]:
        return [await r.aget(timeout=timeout, propagate=propagate) for r in self.results]

    def get(self, timeout: float | None = None, propagate: bool = True) -> Any:
        """The results, blocking; in the app's own event loop, an awaitable of them."""
        if self.app.bridge.in_home_loop():
            return self.aget(timeout, propagate)
        return self.app.bridge.call(
            "GroupResult.get()",
            lambda twin: _get_all(twin, [r.job_id for r in self.results], timeout, propagate),
        )

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        return all(r.successful() for r in self.results)

    def completed_count(self) -> int:
        return sum(r.successful() for r in self.results)


async def _wait_for(write: Any) -> None:
    await write


async def _get(twin: Any, job_id: JobId, timeout: float | None, propagate: bool) -> Any:
    try:
        return await twin.result(job_id, timeout=timeout)
    except JobOutcomeError as exc:
        if propagate:
            raise
        return exc


async def _get_all(
    twin: Any, ids: list[JobId], timeout: float | None, propagate: bool
) -> list[Any]:
    return [await _get(twin, i, timeout, propagate) for i in ids]


async def _record(twin: Any, job_id: JobId) -> JobRecord | None:
    try:
        record: JobRecord = await twin.get(job_id)
    except JobNotFoundError:
        return None
    return record
