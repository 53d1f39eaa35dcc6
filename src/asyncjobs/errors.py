"""Every error asyncjobs raises, under one root.

Errors carry their data as attributes (``UnknownJobError.name``, ``PayloadTooLargeError.size``)
and render a sentence that names the offending value and says what to do. Driver errors are
wrapped at the store boundary with ``raise ... from exc`` so the cause stays visible.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from typing import Any

from .storable import storable_text

MAX_MESSAGE_CHARS = 4_000  # keep stored errors small; the end of a traceback matters most
MAX_TRACEBACK_CHARS = 32_000


class AsyncJobsError(Exception):
    """Something went wrong in asyncjobs."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


# -- configuration and declaration --------------------------------------------------------------


class ConfigurationError(AsyncJobsError):
    """A setting has a value that cannot work.

    ``field`` names the setting (as in ``Settings``), ``value`` is what was given.
    """

    def __init__(self, field: str, value: Any, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"setting {field}={value!r} is invalid: {why}")


class JobDefinitionError(AsyncJobsError):
    """A job was declared in a way that cannot run."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why
        super().__init__(f"job {name!r} cannot be registered: {why}")


class ScheduleDefinitionError(AsyncJobsError, ValueError):
    """A schedule was declared in a way that cannot fire."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why
        super().__init__(f"schedule {name!r} cannot be declared: {why}")


class ScheduleNotFoundError(AsyncJobsError, LookupError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no schedule is called {name!r}; `asyncjobs schedules list` shows the schedules "
            "the nodes have declared"
        )


class UnknownJobError(AsyncJobsError):
    """No job is registered under this name."""

    def __init__(self, name: str, known: list[str] | None = None) -> None:
        self.name = name
        hint = ""
        if known:
            shown = ", ".join(sorted(known)[:10])
            hint = f" Registered jobs: {shown}{', ...' if len(known) > 10 else ''}."
        super().__init__(
            f"unknown job {name!r}: no job with this name is registered on this app.{hint} "
            "Check the name, or import the module that declares it before enqueueing."
        )


# -- payloads ----------------------------------------------------------------------------------


class PayloadError(AsyncJobsError):
    """A payload (arguments or result) cannot be stored."""


class PayloadEncodeError(PayloadError, TypeError):
    """A value cannot be encoded as JSON.

    ``path`` is where the value sits, for example ``kwargs['vm']['disks'][0]``. ``why`` says
    what is wrong with a value of a JSON type that still cannot be stored (a NUL character, a
    lone surrogate, a float that would come back as an int).
    """

    def __init__(
        self,
        job: str,
        what: str,
        path: str,
        type_name: str,
        hint: str = "",
        *,
        why: str | None = None,
        step: str | None = None,
    ) -> None:
        self.job = job
        self.what = what
        self.path = path
        self.type_name = type_name
        self.why = why
        self.step = step  # the step of the job whose value it is (ctx.step), if any
        if why is None:
            why = (
                f"a value of type {type_name} is not JSON. Pass only str, int, float, bool, "
                f"None, list and dict with str keys{hint}"
            )
        shown = path if len(path) <= 200 else f"{path[:120]}...{path[-60:]}"
        where = shown if shown.startswith(what) else f"{what} {shown}"  # not "result result"
        super().__init__(f"cannot encode {where} of {_owner(job, step)}: {why}.")


class PayloadTooLargeError(PayloadError, ValueError):
    """An encoded payload is over the size limit."""

    def __init__(
        self, job: str, what: str, size: int, limit: int, *, step: str | None = None
    ) -> None:
        self.job = job
        self.what = what
        self.size = size
        self.limit = limit
        self.step = step
        super().__init__(
            f"the {what} of {_owner(job, step)} encode to {size:,} bytes, over the limit of "
            f"{limit:,} bytes (max_payload_bytes). Store large data elsewhere (a file, an "
            "object store, a table) and pass a reference instead."
        )


def _owner(job: str, step: str | None) -> str:
    return f"job {job!r}" if step is None else f"step {step!r} of job {job!r}"


class InputsTooLargeError(PayloadError, ValueError):
    """A workflow step's parents' results are too large, together, to pass to it."""

    def __init__(self, job: str, limit: int) -> None:
        self.job = job
        self.limit = limit
        super().__init__(
            f"job {job!r} takes its parents' results as arguments, and together they are over "
            f"{limit:,} bytes, the most a step can receive. Have the parents store large data "
            "elsewhere (a file, an object store, a table) and return references instead."
        )


class InvalidJobOptionError(AsyncJobsError, ValueError):
    """An option given at enqueue time cannot work (priority out of range, bad queue...)."""

    def __init__(self, job: str, option: str, value: Any, why: str) -> None:
        self.job = job
        self.option = option
        self.value = value
        super().__init__(f"cannot enqueue job {job!r} with {option}={value!r}: {why}")


class InvalidArgumentError(AsyncJobsError, ValueError):
    """An argument of an API call cannot work (a reason that Postgres cannot store...)."""

    def __init__(self, call: str, argument: str, value: Any, why: str) -> None:
        self.call = call
        self.argument = argument
        self.value = value
        super().__init__(f"{call}() cannot take {argument}={value!r}: {why}")


# -- workflows and dependencies ---------------------------------------------------------------


class WorkflowError(AsyncJobsError, ValueError):
    """A workflow cannot be submitted as built: a cycle, an unknown job, a bad argument...

    ``step`` names the offending step (its key, or the job name and position); ``why`` says
    what is wrong. Raised before anything is written.
    """

    def __init__(self, step: str | None, why: str) -> None:
        self.step = step
        self.why = why
        where = f"step {step!r} of the workflow" if step is not None else "the workflow"
        super().__init__(f"cannot submit workflow: {where}: {why}")


class WorkflowNotFoundError(AsyncJobsError, LookupError):
    """No workflow has this id."""

    def __init__(self, workflow_id: object) -> None:
        self.workflow_id = workflow_id
        super().__init__(
            f"no workflow with id {workflow_id} exists (it may have been pruned after the "
            "retention period, or the id is not a workflow's: `app.submit` returns it)"
        )


class DependencyNotFoundError(AsyncJobsError, LookupError):
    """A job was enqueued to run after a job that does not exist."""

    def __init__(self, job: str, missing: Sequence[object]) -> None:
        self.job = job
        self.missing = list(missing)
        shown = ", ".join(str(m) for m in missing[:5])
        super().__init__(
            f"cannot enqueue job {job!r} after {shown}: no job with "
            f"{'this id' if len(missing) == 1 else 'these ids'} exists (pruned, or never "
            "enqueued). Pass the ids that enqueue, enqueue_many or submit returned."
        )


# -- the store ---------------------------------------------------------------------------------


class StoreError(AsyncJobsError):
    """The job store failed."""


class StoreUnavailableError(StoreError, ConnectionError):
    """The database cannot be reached."""

    def __init__(self, target: str, why: str) -> None:
        self.target = target
        self.why = why
        super().__init__(
            f"cannot reach Postgres at {target}: {why}. Check that the server is running and "
            "that the DSN (--dsn or ASYNCJOBS_DSN) names the right host, port and database."
        )


class ValueRejectedError(StoreError, ValueError):
    """Postgres refused a statement for a value it carried, not for an outage.

    ``sqlstate`` is Postgres's code (class 22, a data exception, or 54, a program limit).
    Nothing of the statement was written; sending it again fails again.
    """

    def __init__(self, detail: str, sqlstate: str | None = None) -> None:
        self.detail = detail
        self.sqlstate = sqlstate
        super().__init__(
            f"Postgres refused a value in a statement ({detail}); nothing of that statement "
            "was written"
        )


class SchemaNotReadyError(StoreError):
    """The database has no asyncjobs tables yet, or older ones."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        super().__init__(
            f"the asyncjobs schema in {where} is not ready ({detail}). "
            "Run `asyncjobs migrate` (or start a node, which migrates on start)."
        )


class MigrationError(StoreError):
    """The database's schema history does not match this version of asyncjobs."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        super().__init__(f"cannot migrate {where}: {detail}")


class NotStartedError(AsyncJobsError):
    """The app is not started: use ``async with app:`` or ``await app.start()`` first."""


class ClosedError(AsyncJobsError):
    """The app is stopped: start it again (``await app.start()``) to use it."""


class JobNotFoundError(AsyncJobsError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: object) -> None:
        self.job_id = job_id
        super().__init__(
            f"no job with id {job_id} exists (it may have been pruned after the retention period)"
        )


# -- job outcomes, as seen by callers of App.result() ------------------------------------------


class JobOutcomeError(AsyncJobsError):
    """A job ended without a result."""

    def __init__(self, job_id: object, name: str, message: str) -> None:
        self.job_id = job_id
        self.job_name = name
        super().__init__(message)


class JobFailedError(JobOutcomeError):
    """The job raised, and has no attempts left.

    ``error_type``, ``error_message`` and ``traceback`` come from the failed attempt.
    """

    def __init__(self, job_id: object, name: str, error: dict[str, Any] | None) -> None:
        error = error or {}
        self.error_type = str(error.get("type", "unknown"))
        self.error_message = str(error.get("message", ""))
        self.traceback = str(error.get("traceback", ""))
        super().__init__(
            job_id, name, f"job {name!r} ({job_id}) failed: {self.error_type}: {self.error_message}"
        )


class JobCancelledError(JobOutcomeError):
    """The job was cancelled before it finished."""

    def __init__(self, job_id: object, name: str, reason: str | None) -> None:
        self.reason = reason
        super().__init__(job_id, name, f"job {name!r} ({job_id}) was cancelled: {reason}")


class JobLostError(JobOutcomeError):
    """The job was running on a node that died, and may not be retried."""

    def __init__(self, job_id: object, name: str, reason: str | None) -> None:
        self.reason = reason
        super().__init__(job_id, name, f"job {name!r} ({job_id}) was lost: {reason}")


class ResultTimeoutError(AsyncJobsError, TimeoutError):
    """The job did not finish within the time the caller was willing to wait.

    The job itself is not affected: it keeps running.
    """

    def __init__(self, job_id: object, timeout: float) -> None:
        self.job_id = job_id
        self.timeout = timeout
        super().__init__(
            f"job {job_id} did not finish within {timeout:g} s; it keeps running. "
            "Wait again, or cancel it with app.cancel()."
        )


# -- raised inside running jobs ----------------------------------------------------------------


class JobTimeoutError(AsyncJobsError, TimeoutError):
    """The job ran past its time limit."""

    def __init__(self, name: str, limit: float, kind: str) -> None:
        self.job_name = name
        self.limit = limit
        self.kind = kind
        super().__init__(f"job {name!r} exceeded its {kind} time limit of {limit:g} s")


class RetryRequested(AsyncJobsError):
    """Raised by a job to be run again: after ``delay`` seconds, or its policy's backoff.

    It is retried if the job has attempts left, whatever exception types its ``Retry``
    names; otherwise it fails, with ``cause`` (if given) as its error's message. What
    Celery's ``self.retry(countdown=..., exc=...)`` does.
    """

    def __init__(self, delay: float | None = None, cause: BaseException | None = None) -> None:
        if delay is not None and (
            isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0
        ):
            raise ValueError(f"RetryRequested(delay={delay!r}): use zero or more seconds")
        self.delay = None if delay is None else float(delay)
        self.cause = cause
        when = "with the policy's backoff" if delay is None else f"in {delay:g} s"
        why = f"{type(cause).__name__}: {cause}" if cause is not None else "the job asked"
        super().__init__(f"retry requested {when} ({why})")


class JobInterrupted(AsyncJobsError):
    """Raised inside an isolated job that the node asked to stop (see the subclasses)."""


class SoftTimeLimitExceeded(JobInterrupted):
    """Raised inside an isolated job at its soft time limit, so it can clean up and stop.

    If it has not ended by the hard limit, its worker process is killed.
    """


class CancelRequested(JobInterrupted):
    """Raised inside an isolated job whose cancel was requested; it ends ``cancelled``.

    If it has not ended after ``cancel_grace_s``, its worker process is killed.
    """


class WorkerCrashedError(AsyncJobsError):
    """The pool worker running the job died (a crash, a signal, or a resource limit)."""

    def __init__(self, name: str, how: str) -> None:
        self.job_name = name
        self.how = how
        super().__init__(
            f"the pool worker running job {name!r} {how}; only this job is affected and the "
            "worker was replaced"
        )


class StepMismatchError(AsyncJobsError):
    """A durable job called a step otherwise than when it was recorded (its name, kind or
    arguments), so its recorded result cannot stand for this call.

    ``seq`` is the step's position; ``recorded`` and ``called`` describe both calls.
    """

    def __init__(self, job: str, seq: int, recorded: str, called: str) -> None:
        self.job_name = job
        self.seq = seq
        self.recorded = recorded
        self.called = called
        super().__init__(
            f"job {job!r} called {called} as its step #{seq}, but recorded {recorded} there "
            "when that step ran. A durable job must call its steps in the same order, with "
            "the same arguments, on every run; to change them, let the old jobs finish first"
        )


class StepInDoubtError(AsyncJobsError):
    """A step that is not idempotent was running when its attempt ended without knowing
    whether it completed; it is not run again."""

    def __init__(self, job: str, step: str, seq: int) -> None:
        self.job_name = job
        self.step = step
        self.seq = seq
        super().__init__(
            f"step {step!r} (#{seq}) of job {job!r} was running when an earlier attempt ended, "
            "and may or may not have completed, so it is not run again. Declare it "
            "ctx.step(..., idempotent=True) if running it twice is safe"
        )


class StepError(AsyncJobsError):
    """A step that ran in the process pool raised.

    ``error_type``, ``error_message`` and ``traceback`` come from the worker.
    """

    def __init__(self, step: str, error_type: str, message: str, traceback: str = "") -> None:
        self.step = step
        self.error_type = error_type
        self.error_message = message
        self.traceback = traceback
        super().__init__(f"step {step!r} raised {error_type}: {message}")


class StaleAttemptError(AsyncJobsError):
    """The attempt no longer runs on this node (it was reaped while cut off, say): what it
    tried to record was not written, and it stops."""

    def __init__(self, job: str, job_id: object, attempt: int, what: str) -> None:
        self.job_name = job
        self.job_id = job_id
        self.attempt = attempt
        super().__init__(
            f"attempt {attempt} of job {job!r} ({job_id}) no longer runs on this node (it was "
            f"taken over while the node was cut off): {what} was not recorded, and the "
            "attempt stops here"
        )


class IsolationError(AsyncJobsError):
    """Something an isolated job cannot do: its worker process has no database access."""


# -- the process pool --------------------------------------------------------------------------


class PoolError(AsyncJobsError):
    """The process pool could not start or keep its zygote running."""


# -- describing an error for storage -------------------------------------------------------------


def qualified_name(kind: type) -> str:
    """``ValueError`` for builtins, ``package.module.Class`` for everything else."""
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def describe_error(exc: BaseException) -> dict[str, str]:
    """A job's error as stored: its type, message and traceback, each cut to its limit."""
    return error_fields(
        qualified_name(type(exc)), str(exc), "".join(traceback.format_exception(exc))
    )


def error_fields(type_name: str, message: str, tb: str) -> dict[str, str]:
    """An error as stored, from its parts: each cut to its limit and made storable (a NUL
    character replaced, with a note saying so), so that no error text can stop its outcome,
    or the outcomes written with it, from being stored."""
    return {
        "type": storable_text(type_name[:MAX_MESSAGE_CHARS]),
        "message": storable_text(message[:MAX_MESSAGE_CHARS]),
        "traceback": storable_text(tb[-MAX_TRACEBACK_CHARS:]),
    }


def without_runner_frames(exc: BaseException, runner_files: frozenset[str]) -> BaseException:
    """``exc`` with the leading frames of the node's own code (the frames that called the
    job) dropped from its traceback, so that a stored traceback starts in the job. Kept whole
    when the error comes from the node itself."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in runner_files:
        tb = tb.tb_next
    return exc if tb is None else exc.with_traceback(tb)
