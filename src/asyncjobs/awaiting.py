"""Waiting for outcomes: ``result`` and ``workflow_result`` (``App``'s mixin for them).

A caller registers its interest before reading the job, and is woken by the store's
``finished`` event (results.py); it also re-reads now and then, in case an event was lost.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from .app_state import AppState
from .errors import (
    ClosedError,
    JobCancelledError,
    JobNotFoundError,
    ResultTimeoutError,
    WorkflowNotFoundError,
)
from .jobs import JobId, coerce_job_id
from .results import result_of
from .workflows import WorkflowId

RESULT_RECHECK_S = 2.0  # result() re-reads the job this often, in case a NOTIFY was missed
# The first re-reads come sooner, doubling up to RESULT_RECHECK_S: a job that ends while its
# waiter registers (watch_job) may not see the registration, so no NOTIFY comes, and that is
# likeliest for a short job (asking at once for a just-enqueued job's result).
FIRST_RECHECK_S = 0.05


class Awaiting(AppState):
    """``app.result``, ``app.workflow_result``."""

    async def _ensure_listening(self) -> None:
        if self._listening:
            return
        request = self._listen_ready
        if request is None or (request.done() and request.exception() is not None):
            request = self._listen_ready = asyncio.get_running_loop().create_future()
            self._listen_wanted.set()
        await asyncio.shield(request)

    async def result(self, job_id: JobId | str, *, timeout: float | None = None) -> Any:
        """Wait for a job to finish and return its result.

        Raises ``JobFailedError`` (with the error type, message and traceback),
        ``JobCancelledError``, ``JobLostError``, ``JobNotFoundError``, or
        ``ResultTimeoutError`` if it has not finished within ``timeout`` seconds (the job is
        not affected).
        """
        store = self._check_started()
        job_id = coerce_job_id(job_id)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        await self._ensure_listening()
        recheck = FIRST_RECHECK_S
        while True:
            # Registered before reading the job (see results.py).
            future = self._waiters.register(job_id)
            try:
                record = await store.watch(job_id)
                if record is None:
                    raise JobNotFoundError(job_id)
                if record.state.is_terminal:
                    return result_of(record)
                if self._failure is not None or self._state != "started":
                    raise ClosedError("the app stopped while waiting for a result")
                wait, recheck = recheck, min(recheck * 2, RESULT_RECHECK_S)
                if deadline is not None:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        raise ResultTimeoutError(job_id, timeout or 0.0)
                    wait = min(wait, remaining)
                with anyio.move_on_after(wait):
                    await future
            finally:
                self._waiters.discard(job_id, future)

    async def workflow_result(
        self, workflow_id: WorkflowId | str, *, timeout: float | None = None
    ) -> Any:
        """Wait for the workflow's last steps and return their result: the last step's of a
        chain or chord, a list (in order) if several steps end it, as a group does. Raises as
        ``result`` does for the first of those steps that did not succeed."""
        store = self._check_started()
        wid = coerce_job_id(workflow_id)
        info = await store.workflow_info(wid)
        if info is None:
            raise WorkflowNotFoundError(wid)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        results = []
        for sink in info.sinks:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                results.append(await self.result(sink, timeout=left))
            except JobCancelledError as exc:
                if exc.reason not in ("upstream_failed", "upstream_cancelled"):
                    raise
                # Report the cause, not its echo: the first step that failed upstream.
                for failure in await store.workflow_failures(wid, 1):
                    record = await store.get(failure.id)
                    if record is not None:
                        result_of(record)
                raise
        return results[0] if len(results) == 1 else results
