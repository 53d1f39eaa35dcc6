"""Writing jobs: ``enqueue``, ``enqueue_many`` and ``submit`` (``App``'s mixin for them).

Every check and encoding happens before anything is written (prepare.py, workflows.py), and
concurrent single enqueues share one INSERT (enqueue.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from .app_state import AppState
from .enqueue import with_retries
from .errors import InvalidJobOptionError, StoreUnavailableError, WorkflowError
from .ids import ids_as_read, new_id, new_ids
from .jobs import JobDef, JobId, Signature, coerce_job_id, iter_signatures
from .prepare import prepare, prepare_bulk
from .store.base import Store
from .workflows import Item, Workflow, WorkflowId, build, prepare_workflow

log = logging.getLogger("asyncjobs")

BULK_THRESHOLD = 200  # from this many jobs (without unique keys) enqueue_many uses COPY


class Producing(AppState):
    """``app.enqueue``, ``app.enqueue_many``, ``app.submit``."""

    async def enqueue(
        self,
        job: str | JobDef[Any, Any],
        /,
        *args: Any,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        unique_key: str | None = None,
        after: Sequence[JobId | str] | None = None,
        concurrency_key: str | None = None,
        concurrency_limit: int | None = None,
        **kwargs: Any,
    ) -> JobId:
        """Enqueue one job and return its id once it is durably stored.

        ``run_at`` (an aware datetime) or ``delay`` (seconds or a timedelta) schedule it for
        later. ``queue`` and ``priority`` override the job's own. With ``unique_key``, if an
        unfinished job already holds that key, nothing is inserted and its id is returned.
        With ``after`` (job ids), it waits until every one of those jobs has succeeded, and
        is cancelled (``upstream_failed``) if one fails. ``concurrency_key`` and
        ``concurrency_limit`` override the job's own. Bad arguments raise before anything is
        written. Concurrent calls are coalesced into one INSERT per round trip.
        """
        definition = self._definition(job)
        sig = Signature(definition.name, args, kwargs, queue, priority, run_at, delay,
                        unique_key, False, concurrency_key, concurrency_limit)  # fmt: skip
        return await self._enqueue(definition, sig, after, None)

    async def _enqueue(
        self,
        definition: JobDef[Any, Any],
        sig: Signature,
        after: Sequence[JobId | str] | None,
        workflow_id: JobId | None,
        job_id: JobId | None = None,
    ) -> JobId:
        """Prepare and write one job (``enqueue`` and ``JobContext.enqueue``), in its enqueue
        span when tracing is on. ``job_id``: an id chosen beforehand (celery_compat's delay
        in a running loop returns it before the write)."""
        tracing = self._tracing
        job_id = new_id() if job_id is None else job_id
        if tracing is None:
            return await self._write_one(definition, sig, job_id, after, workflow_id, None)
        queue = definition.queue if sig.queue is None else sig.queue
        with tracing.enqueuing(definition.name, queue, job_id) as trace:
            return await self._write_one(definition, sig, job_id, after, workflow_id, trace)

    async def _write_one(
        self,
        definition: JobDef[Any, Any],
        sig: Signature,
        job_id: JobId,
        after: Sequence[JobId | str] | None,
        workflow_id: JobId | None,
        trace: str | None,
    ) -> JobId:
        store = self._check_started()
        assert self._batcher is not None
        new = prepare(
            sig, definition, job_id, self.clock.time(), self._settings.max_payload_bytes, trace
        )
        if after is None:
            return await self._batcher.submit(new)
        if isinstance(after, str | bytes) or not isinstance(after, Sequence):
            raise InvalidJobOptionError(sig.name, "after", after, "use a list of job ids")
        try:
            deps = [coerce_job_id(d) for d in after]
        except ValueError as exc:
            raise InvalidJobOptionError(sig.name, "after", after, str(exc)) from None
        if not deps:
            return await self._batcher.submit(new)
        if sig.unique_key is not None:
            raise InvalidJobOptionError(
                sig.name, "unique_key", sig.unique_key, "a job with after= cannot have one"
            )
        return await with_retries(partial(store.enqueue_after, new, deps, workflow_id=workflow_id))

    async def enqueue_many(self, signatures: Sequence[Signature]) -> list[JobId]:
        """Enqueue many jobs in one transaction (all or none) and return their ids in order.

        Every signature is validated and encoded before anything is written. Large batches use
        COPY; batches with unique keys use one INSERT.
        """
        tracing = self._tracing
        if tracing is None:
            return await self._enqueue_many(signatures, None)
        with tracing.enqueuing_batch("enqueue_many", len(signatures)) as trace:
            return await self._enqueue_many(signatures, trace)

    async def _enqueue_many(
        self, signatures: Sequence[Signature], trace: str | None
    ) -> list[JobId]:
        store = self._check_started()
        items = iter_signatures(signatures)
        now = self.clock.time()
        limit = self._settings.max_payload_bytes
        if len(items) >= BULK_THRESHOLD and self._copyable(items):
            # COPY, making each id and preparing each job while the previous ones stream (see
            # Store.enqueue_bulk).
            ids: list[JobId] = []
            reading = ids_as_read(len(items), ids)
            try:
                await store.enqueue_bulk(
                    prepare_bulk(items, reading, now, limit, self._definition, trace)
                )
                return ids
            except StoreUnavailableError as exc:
                # The COPY may have committed before its answer was lost. Write the same jobs
                # (same ids) the other way, which skips those that exist.
                log.warning("enqueue_many's COPY failed (%s); writing again by INSERT", exc.why)
                for _ in reading:  # make (and append) the ids the COPY did not reach
                    pass
        else:
            ids = new_ids(len(items))
        jobs = [
            prepare(sig, self._definition(sig.name), job_id, now, limit, trace)
            for sig, job_id in zip(items, ids, strict=True)
        ]
        return await with_retries(partial(store.enqueue, jobs))

    def _copyable(self, items: Sequence[Signature]) -> bool:
        """Whether every job may go by COPY, which writes neither unique keys nor limits."""
        if any(
            s.unique_key is not None
            or s.concurrency_key is not None
            or s.concurrency_limit is not None
            for s in items
        ):
            return False
        # Each job name once (in order, so an unknown one is reported as the first such)
        return all(
            self._definition(name).limits is None for name in dict.fromkeys(s.name for s in items)
        )

    async def submit(self, workflow: Workflow | Item, *, name: str | None = None) -> WorkflowId:
        """Submit a workflow (a ``Workflow``, chain, group, chord or signature) and return its
        id once every step and edge is stored, in one transaction.

        The whole workflow is validated first: an unknown job, an argument that does not
        encode, a dependency on a missing key or a cycle raises ``WorkflowError`` naming the
        step, and nothing is written. Steps with dependencies wait; the rest start at once.
        """
        store = self._check_started()
        wf = build(workflow, name)
        if wf.submitted:
            raise WorkflowError(
                None, f"this Workflow is already submitted (as {wf.id}); build a new one to "
                "run it again",
            )  # fmt: skip
        tracing = self._tracing
        if tracing is None:
            return await self._submit(store, wf, None)
        with tracing.enqueuing_batch("submit", len(wf.steps), wf.id) as trace:
            return await self._submit(store, wf, trace)

    async def _submit(self, store: Store, wf: Workflow, trace: str | None) -> WorkflowId:
        new = prepare_workflow(
            wf, self._definition, self.clock.time(), self._settings.max_payload_bytes, trace
        )
        # A retry after a lost connection writes nothing twice: the workflow's id is fixed.
        await with_retries(partial(store.submit_workflow, new))
        wf.submitted = True
        return new.id
