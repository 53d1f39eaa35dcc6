"""Running one coroutine job, and turning how it ended into an ``Outcome``.

Each job is one asyncio task running ``execute``. Nothing else is allocated per job unless the
job asks for it: no cancel scope (a deadline is one timer handle on the loop's own heap, and
only for jobs that declare a time limit), and a ``JobContext`` only for jobs that take one.

Why a job stops early is recorded in ``RunningJob.stop_reason`` *before* its task is cancelled,
so the ``CancelledError`` handler knows whether it is a cancel request, a time limit or a node
shutdown, and the outcome follows the table in DESIGN §10.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import CoroutineType

import anyio
import orjson

from ..errors import (
    InputsTooLargeError,
    JobTimeoutError,
    PayloadError,
    RetryRequested,
    StoreError,
    describe_error,
    without_runner_frames,
)
from ..jobs import JobContext, JobId
from ..serialization import decode_args, encode_result
from ..store.base import MAX_INPUT_BYTES, ClaimedJob, Outcome
from . import cputime
from .cputime import metered
from .running import (
    STOP_CANCEL,
    STOP_SHUTDOWN,
    STOP_SOFT_TIMEOUT,
    STOP_TIMEOUT,
    JobRunner,
    RunningJob,
)
from .steps import JobParked, JobSteps

log = logging.getLogger("asyncjobs.node")

RUNNER_FILES = frozenset({__file__, cputime.__file__})  # frames a job's traceback leaves out


async def execute(node: JobRunner, job: RunningJob, raw_args: bytes) -> None:
    """The body of a job's task: run it, then hand the outcome to the node."""
    definition = job.definition
    assert definition is not None
    if node.tracing is not None:  # its run span, current while it runs (asyncjobs.tracing)
        node.tracing.start_run(job, node.id)
    try:
        args, kwargs = decode_args(raw_args)
        if definition.wants_context:
            job.ctx = JobContext(
                node.app, job.id, job.name, job.queue, job.attempt, job.max_attempts,
                job.workflow_id,
            )  # fmt: skip
            job.steps = job.ctx._steps = JobSteps(node, job, definition.durable)
            args.insert(0, job.ctx)
        job.started = time.monotonic()
        coro = definition.fn(*args, **kwargs)
        # async def jobs give coroutines; anything else that is awaitable runs unmetered
        if node.settings.measure_cpu and type(coro) is CoroutineType:
            value = await metered(coro, job)
        else:
            value = await coro
    except JobParked:
        node.parked(job)  # its row says when it runs again; there is no outcome to write
        return
    except asyncio.CancelledError:
        if job.stop_reason == STOP_SHUTDOWN and job.durable and await resumed(node, job):
            return
        outcome = stopped_outcome(node, job)
    except (Exception, SystemExit) as exc:
        outcome = failed_outcome(node, job, without_runner_frames(exc, RUNNER_FILES))
    else:
        try:
            # None, the most common result, is stored as SQL NULL: nothing to encode
            data = (
                None
                if value is None
                else encode_result(job.name, value, node.settings.max_payload_bytes)
            )
        except PayloadError as exc:
            outcome = failed_outcome(node, job, exc)
        else:
            # With its run time and CPU time now, so that finish need not build it again;
            # tuple.__new__ skips the named tuple's Python-level __new__ (half the cost)
            outcome = tuple.__new__(Outcome, (
                job.id, job.attempt, "succeeded", data, None, node.clock.time(), None, None,
                time.monotonic() - job.started, job.cpu,
            ))  # fmt: skip
    node.finish(job, outcome)


def error_payload(exc: BaseException) -> bytes:
    return orjson.dumps(describe_error(exc))


def failed_outcome(node: JobRunner, job: RunningJob, exc: BaseException) -> Outcome:
    """Failed for good, or re-queued after a backoff if the job's retry policy allows."""
    retry = job.definition.retry if job.definition else None
    if isinstance(exc, RetryRequested):  # retried whatever the policy's exception types
        return failure_outcome(
            node, job, error_payload(exc), type(exc).__name__, retry is not None, exc.delay
        )
    retryable = retry is not None and retry.retries(exc)
    return failure_outcome(node, job, error_payload(exc), type(exc).__name__, retryable)


def failure_outcome(
    node: JobRunner,
    job: RunningJob,
    error: bytes,
    type_name: str,
    retryable: bool,
    delay: float | None = None,
) -> Outcome:
    """``failed``, or re-queued after ``delay`` (by default the policy's backoff) if
    retryable with attempts left."""
    now = node.clock.time()
    retry = job.definition.retry if job.definition else None
    if retry is not None and retryable and job.attempt < job.max_attempts:
        delay = retry.delay(job.attempt) if delay is None else delay
        reason = f"attempt {job.attempt} of {job.max_attempts} raised {type_name}"
        state = "scheduled" if delay > 0 else "queued"
        return Outcome(job.id, job.attempt, state, None, error, now, now + delay, reason)
    return Outcome(job.id, job.attempt, "failed", None, error, now, None, None)


def stopped_outcome(node: JobRunner, job: RunningJob) -> Outcome:
    """The outcome of a job whose task was cancelled, according to why it was."""
    reason = job.stop_reason
    now = node.clock.time()
    definition = job.definition
    if reason == STOP_CANCEL:
        # None keeps the reason the canceller gave, stored with the request.
        return Outcome(job.id, job.attempt, "cancelled", None, None, now, None, None)
    if reason == STOP_SHUTDOWN:
        return shutdown_outcome(job, now, node.id)
    if reason in (STOP_SOFT_TIMEOUT, STOP_TIMEOUT) and definition is not None:
        limit = definition.soft_timeout if reason == STOP_SOFT_TIMEOUT else definition.timeout
        kind = "soft" if reason == STOP_SOFT_TIMEOUT else "hard"
        return failed_outcome(node, job, JobTimeoutError(job.name, limit or 0.0, kind))
    # The job's own code raised CancelledError (for example it awaited something that was
    # cancelled). Nobody asked it to stop, so it is a failure like any other exception.
    return failed_outcome(node, job, asyncio.CancelledError("the job raised CancelledError"))


async def resumed(node: JobRunner, job: RunningJob) -> bool:
    """Park a durable job that a shutdown interrupted, to run again at once on any node: its
    steps are kept, and a resume is not a retry. False if it cannot be: a step that is not
    idempotent was running (the job is lost: see shutdown_outcome), or the database is out
    of reach (the job ends as any other would)."""
    if job.steps is not None and job.steps.in_doubt is not None:
        return False
    try:
        with anyio.fail_after(node.settings.cancel_grace_s):
            parked = await node.store.park(
                node.id, job.id, job.attempt, STOP_SHUTDOWN, until=node.clock.time()
            )
    except (StoreError, TimeoutError) as exc:
        log.warning("job %s (%s) could not be parked at shutdown: %s", job.name, job.id, exc)
        return False
    if parked.parked:
        node.parked(job)
    return parked.parked or not parked.owned  # not owned: its outcome would be fenced anyway


def shutdown_outcome(job: RunningJob, now: float, node_id: JobId) -> Outcome:
    """A job interrupted by node shutdown: re-queued if it has attempts left, else cancelled.
    A durable job whose step was running (one that is not idempotent) is lost: the step is
    in doubt."""
    doubt = job.steps.in_doubt if job.steps is not None else None
    if doubt is not None:
        seq, name = doubt
        reason = f"step {name!r} (#{seq}) was running when node {node_id} shut down"
        return Outcome(job.id, job.attempt, "lost", None, None, now, None, reason)
    if job.attempt < job.max_attempts and job.definition is not None and job.definition.retry:
        return Outcome(job.id, job.attempt, "queued", None, None, now, now, STOP_SHUTDOWN)
    return Outcome(job.id, job.attempt, "cancelled", None, None, now, None, STOP_SHUTDOWN)


def abandoned_outcome(node: JobRunner, job: RunningJob) -> Outcome:
    """A job that did not end within the grace period after being stopped.

    Its task is left to finish (a coroutine cannot be killed), but its slot is freed and its
    outcome is written now; whatever the task does later is ignored.
    """
    if job.stop_reason in (STOP_SHUTDOWN, STOP_CANCEL):
        return stopped_outcome(node, job)
    definition = job.definition
    limit = (definition.timeout or definition.soft_timeout or 0.0) if definition else 0.0
    return failed_outcome(node, job, JobTimeoutError(job.name, limit, "hard"))


def inputs_too_large_outcome(node: JobRunner, job: RunningJob) -> Outcome:
    """A step whose parents' results are too large to pass: failed, never retried (the
    same results would be passed again)."""
    error = InputsTooLargeError(job.name, MAX_INPUT_BYTES)
    return failure_outcome(node, job, error_payload(error), type(error).__name__, False)


def unknown_job_outcome(node: JobRunner, claimed: ClaimedJob) -> Outcome:
    """A claimed job whose name this node does not know: failed, and the node goes on."""
    error = orjson.dumps(
        {
            "type": "asyncjobs.errors.UnknownJobError",
            "message": (
                f"unknown job {claimed.name!r}: node {node.id} has no job registered under this "
                "name. Deploy the code that declares it to every node serving queue "
                f"{claimed.queue!r}."
            ),
            "traceback": "",
        }
    )
    return Outcome(
        claimed.id, claimed.attempt, "failed", None, error, node.clock.time(), None, "unknown job"
    )
