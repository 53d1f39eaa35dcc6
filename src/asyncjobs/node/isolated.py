"""Running an isolated job in a pool worker, and turning its reply into an ``Outcome``.

The job's task on the node only waits: for a worker, then for the worker's reply. Stopping
it (cancel, time limits, shutdown) signals the worker rather than cancelling the task; see
``stopping.stop_job``. The outcome follows DESIGN §10: a worker that dies mid-job fails only that
job (retried if the job's policy has attempts left, whatever exception types it names), and
the pool replaces the worker at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from ..errors import (
    PayloadError,
    PoolError,
    RetryRequested,
    WorkerCrashedError,
    error_fields,
    qualified_name,
)
from ..pool.handle import WorkerDied
from ..serialization import check_storable
from ..store.base import Outcome
from .execution import (
    abandoned_outcome,
    failed_outcome,
    failure_outcome,
    stopped_outcome,
)
from .running import JobRunner, RunningJob

# What a worker reports when the node's stop signal raised inside the job.
INTERRUPTED = frozenset(
    {"asyncjobs.errors.SoftTimeLimitExceeded", "asyncjobs.errors.CancelRequested"}
)


async def execute_isolated(node: JobRunner, job: RunningJob, raw_args: bytes) -> None:
    """The body of an isolated job's task: get a worker, run the job there, report."""
    pool = node.pool
    assert pool is not None and job.definition is not None
    if node.tracing is not None:  # its run span, on the node's side (asyncjobs.tracing)
        node.tracing.start_run(job, node.id)
    try:
        worker = await pool.acquire()
    except asyncio.CancelledError:
        node.finish(job, stopped_outcome(node, job))
        return
    except (PoolError, WorkerDied, OSError, TimeoutError) as exc:
        node.finish(job, failed_outcome(node, job, exc))
        return
    job.worker = worker
    job.started = time.monotonic()
    if job.stop_reason is not None or job.finished:  # stopped while it waited for a worker
        pool.release(worker)
        node.finish(job, stopped_outcome(node, job))
        return
    header = {
        "op": "run", "id": str(job.id), "name": job.name, "queue": job.queue,
        "attempt": job.attempt, "max_attempts": job.max_attempts,
        "workflow_id": str(job.workflow_id) if job.workflow_id else None,
    }  # fmt: skip
    try:
        reply, body = await pool.call(worker, header, raw_args)
    except WorkerDied as died:
        pool.discard(worker)
        node.finish(job, died_outcome(node, job, died.how))
        return
    except BaseException:
        # Abandoned by the node (its outcome is already written): the worker must not go on.
        worker.kill()
        pool.discard(worker)
        raise
    cpu = reply.get("cpu")
    if isinstance(cpu, float):
        job.cpu = cpu
    outcome = reply_outcome(node, job, reply, body)
    if outcome is None:
        worker.kill()
        pool.discard(worker)
        outcome = failed_outcome(
            node, job, WorkerCrashedError(job.name, "sent a reply that is not valid JSON")
        )
    else:
        pool.release(worker, retire=bool(reply.get("retire")))
    node.finish(job, outcome)


def reply_outcome(
    node: JobRunner, job: RunningJob, reply: dict[str, Any], body: bytes
) -> Outcome | None:
    """The outcome a worker's reply describes; None if the reply cannot be trusted."""
    if reply["op"] == "ok":
        try:
            value = orjson.loads(body)  # stored as jsonb: a worker's bytes are checked
        except orjson.JSONDecodeError:
            return None
        try:  # the worker checked it too, but a job's process is never trusted with that
            check_storable(job.name, "result", body, ((value, "result"),))
        except PayloadError as exc:
            return failed_outcome(node, job, exc)
        now = node.clock.time()
        result = None if body == b"null" else body
        return Outcome(job.id, job.attempt, "succeeded", result, None, now, None, None)
    if reply["op"] != "error":
        return None
    type_name = str(reply.get("type", "Exception"))
    if job.stop_reason is not None and type_name in INTERRUPTED:
        return stopped_outcome(node, job)
    error = orjson.dumps(
        error_fields(type_name, str(reply.get("message", "")), str(reply.get("traceback", "")))
    )
    mro = reply.get("mro")
    names = set(mro) if isinstance(mro, list) else {type_name}
    retry = job.definition.retry if job.definition else None
    if qualified_name(RetryRequested) in names:  # retried whatever the policy's types
        delay = reply.get("retry_delay")
        delay = float(delay) if isinstance(delay, int | float) and delay >= 0 else None
        return failure_outcome(node, job, error, type_name, retry is not None, delay)
    retryable = retry is not None and any(qualified_name(t) in names for t in retry.on)
    return failure_outcome(node, job, error, type_name, retryable)


def died_outcome(node: JobRunner, job: RunningJob, how: str) -> Outcome:
    """The worker died mid-job: killed by the node on purpose, or crashed."""
    if job.stop_reason is not None:
        return abandoned_outcome(node, job)
    exc = WorkerCrashedError(job.name, how)
    error = orjson.dumps({"type": "asyncjobs.errors.WorkerCrashedError", "message": str(exc),
                          "traceback": ""})  # fmt: skip
    return failure_outcome(node, job, error, "WorkerCrashedError", retryable=True)
