"""Reading and steering stored jobs: ``get``, ``cancel``, ``retry``, ``counts``, ``purge``, and
a workflow's status and cancel (``App``'s mixin for them).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .admin import DEFAULT_PURGE_STATES, check_queue, purge, purge_states
from .app_state import AppState
from .errors import InvalidArgumentError, JobNotFoundError, WorkflowNotFoundError
from .jobs import JobId, JobRecord, JobState, coerce_job_id
from .storable import text_problem
from .store.base import StepRecord
from .workflows import MAX_FAILURES_SHOWN, WorkflowId, WorkflowStatus, status_from

MAX_REASON_CHARS = 1000  # a cancel reason


class Controlling(AppState):
    """``app.get``, ``cancel``, ``retry``, ``counts``, ``purge``, ``workflow_status`` and
    ``cancel_workflow``."""

    async def get(self, job_id: JobId | str) -> JobRecord:
        """The job as stored now. Raises ``JobNotFoundError`` if there is none."""
        store = self._check_started()
        job_id = coerce_job_id(job_id)
        record = await store.get(job_id)
        if record is None:
            raise JobNotFoundError(job_id)
        return record

    async def steps(self, job_id: JobId | str) -> list[StepRecord]:
        """The recorded steps of a durable job (``ctx.step``, ``ctx.sleep``,
        ``ctx.wait_for``), in call order: name, kind, state, attempt, times and error.
        Raises ``JobNotFoundError`` if there is no such job."""
        store = self._check_started()
        job_id = coerce_job_id(job_id)
        if await store.get(job_id) is None:
            raise JobNotFoundError(job_id)
        return await store.job_steps(job_id)

    async def cancel(
        self, job_id: JobId | str, *, reason: str = "cancelled by request"
    ) -> JobState:
        """Cancel a job and return its state after the request.

        ``cancelled``: it will not run. ``running``: its node was told and cancels it within
        about a second (the job sees ``CancelledError`` at its next ``await``); it then ends
        ``cancelled``. A finished job is left alone and its final state is returned.
        """
        store = self._check_started()
        check_reason("cancel", reason)
        job_id = coerce_job_id(job_id)
        state = await store.cancel(job_id, reason, self.clock.time())
        if state is None:
            raise JobNotFoundError(job_id)
        return state

    async def retry(self, *job_ids: JobId | str) -> list[JobId]:
        """Queue failed or lost jobs again, for one more attempt; returns those re-queued.

        Jobs in other states are left alone, and so is a job whose unique key another
        unfinished job holds. In a workflow, the dependents its failure cancelled stay
        cancelled.
        """
        store = self._check_started()
        return await store.retry_jobs([coerce_job_id(j) for j in job_ids], self.clock.time())

    async def counts(self, queue: str | None = None, *, finished: bool = False) -> dict[str, int]:
        """How many jobs of ``queue`` (of every queue if None) are in each state.

        By default the unfinished states: ``scheduled``, ``waiting``, ``queued`` (parked jobs
        included) and ``running``, each counted through its own index, so the call stays
        cheap however much history is kept. With ``finished=True``, also ``succeeded``,
        ``failed``, ``cancelled`` and ``lost``: a count over the history, which costs as much
        as the history is long.
        """
        store = self._check_started()
        if queue is not None:
            check_queue("counts", queue)
        return await store.count_jobs(queue, bool(finished))

    async def purge(
        self, queue: str, *, states: str | Iterable[str] = DEFAULT_PURGE_STATES
    ) -> dict[str, int]:
        """Delete the jobs of ``queue`` in ``states`` (default: ``queued``), and return how
        many were deleted per state.

        Any state but ``running`` may be purged: ``scheduled``, ``waiting``, ``queued``, or
        finished ones. Running jobs are never touched (cancel them first), nor is a job a
        node is claiming at that instant. The dependents of a purged job that had not run
        are cancelled (``upstream_cancelled``); a caller waiting on a purged job's result
        gets ``JobNotFoundError``. Deletes in batches of 5,000, each its own transaction.
        """
        store = self._check_started()
        return await purge(store, check_queue("purge", queue), purge_states(states))

    async def workflow_status(self, workflow_id: WorkflowId | str) -> WorkflowStatus:
        """Counts of the workflow's jobs per state, its state, and the steps that failed."""
        store = self._check_started()
        wid = coerce_job_id(workflow_id)
        info = await store.workflow_info(wid)
        if info is None:
            raise WorkflowNotFoundError(wid)
        failures = await store.workflow_failures(wid, MAX_FAILURES_SHOWN)
        return status_from(info, failures)

    async def cancel_workflow(
        self, workflow_id: WorkflowId | str, *, reason: str = "workflow cancelled"
    ) -> WorkflowStatus:
        """Cancel every step not finished: waiting and queued ones at once, running ones as
        ``cancel`` does. Returns the status after the request."""
        store = self._check_started()
        check_reason("cancel_workflow", reason)
        wid = coerce_job_id(workflow_id)
        if await store.workflow_info(wid) is None:
            raise WorkflowNotFoundError(wid)
        await store.cancel_workflow(wid, reason, self.clock.time())
        return await self.workflow_status(wid)


def check_reason(call: str, reason: Any) -> None:
    """Raise ``InvalidArgumentError`` for a cancel reason that cannot be stored."""
    if not isinstance(reason, str) or not 0 < len(reason) <= MAX_REASON_CHARS:
        raise InvalidArgumentError(
            call, "reason", reason, f"use a string of 1 to {MAX_REASON_CHARS:,} characters"
        )
    if why := text_problem(reason):
        raise InvalidArgumentError(call, "reason", reason, why)
