"""The job model: states, retry policy, job definitions, records, and the context a job gets.

See DESIGN §3. A job definition is an ``async def``, which runs on the node's event loop as one
task, or a function declared ``isolated=True``, which runs in a pool worker process (see
``asyncjobs.pool``). Delivery is *at most once* unless the job declares ``retry=Retry(...)``.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import typing
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, ParamSpec, Protocol, TypeVar

from .errors import ConfigurationError, IsolationError
from .limits import JobLimits
from .signatures import Signature, iter_signatures

JobId = uuid.UUID
P = ParamSpec("P")
R = TypeVar("R")

PRIORITY_MIN = -32768  # priorities are stored as smallint; higher runs first
PRIORITY_MAX = 32767


class JobState(StrEnum):
    """Where a job is in its life. The last four are terminal."""

    SCHEDULED = "scheduled"  # run_at is in the future
    WAITING = "waiting"  # dependencies are not done yet
    QUEUED = "queued"  # ready to run
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # was running on a node that died, and may not be retried

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


@dataclass(frozen=True, slots=True)
class Retry:
    """Retry a failed job with exponential backoff.

    - ``attempts``: total attempts, the first included (``Retry(attempts=3)`` runs at most 3
      times). A node death counts as one attempt.
    - ``backoff``: seconds before the second attempt; each later wait doubles.
    - ``max_delay``: cap on any single wait, in seconds.
    - ``jitter``: spread each wait uniformly by this fraction (0.1 means +/-10%), so that many
      jobs failing together do not retry together.
    - ``on``: exception types that are retried; anything else fails the job at once.
    """

    attempts: int = 3
    backoff: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.1
    on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise ConfigurationError("Retry.attempts", self.attempts, "expected a whole number")
        if not 1 <= self.attempts <= 10_000:
            raise ConfigurationError("Retry.attempts", self.attempts, "must be 1 to 10,000")
        for name in ("backoff", "max_delay"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"Retry.{name}", value, "must be a number of seconds >= 0")
        if not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ConfigurationError("Retry.jitter", self.jitter, "must be between 0 and 1")
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        if not on or not all(isinstance(t, type) and issubclass(t, BaseException) for t in on):
            raise ConfigurationError("Retry.on", self.on, "expected exception classes")
        object.__setattr__(self, "on", on)

    def delay(self, failed_attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt number ``failed_attempt`` (1-based) failed."""
        base = self.backoff * 2.0 ** min(failed_attempt - 1, 60)
        spread = 1.0 + self.jitter * (2.0 * rand() - 1.0)
        return min(self.max_delay, base * spread)

    def retries(self, exc: BaseException) -> bool:
        return isinstance(exc, self.on)


class JobDef(Generic[P, R]):
    """A registered job: the function plus its declared options.

    Calling it calls the function directly (handy in tests); ``.s(...)`` makes a signature.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        priority: int,
        timeout: float | None,
        soft_timeout: float | None,
        retry: Retry | None,
        isolated: bool = False,
        limits: JobLimits | None = None,
        durable: bool = False,
    ) -> None:
        self.fn = fn
        self.isolated = isolated
        self.durable = durable  # resumes after its node dies; ctx.sleep and wait_for park it
        self.limits = limits  # concurrency key and rate limit, if declared
        self.name = name
        self.queue = queue
        self.priority = priority
        self.timeout = timeout
        self.soft_timeout = soft_timeout
        self.retry = retry
        self.max_attempts = retry.attempts if retry else 1
        self.wants_context = wants_context(fn)
        self.__wrapped__ = fn
        self.__name__ = getattr(fn, "__name__", name)
        self.__qualname__ = getattr(fn, "__qualname__", name)
        self.__doc__ = fn.__doc__

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Awaitable[R]:
        return self.fn(*args, **kwargs)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this job with these arguments (a JobContext is added at run time)."""
        return Signature(self.name, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: in a workflow it does not receive its parent's result."""
        return Signature(self.name, args, kwargs, immutable=True)

    def __repr__(self) -> str:
        return f"<JobDef {self.name!r} queue={self.queue!r}>"


def wants_context(fn: Callable[..., Any]) -> bool:
    """True when the first parameter is annotated ``JobContext``."""
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return False
    annotation = params[0].annotation
    if isinstance(annotation, str):
        # With `from __future__ import annotations`, ctx: "JobContext" arrives as "'JobContext'".
        return annotation.strip("'\" ").rsplit(".", 1)[-1] == "JobContext"
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        return annotation is JobContext
    return hints.get(params[0].name) is JobContext


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored: what ``app.get()`` returns. Payloads are already decoded."""

    id: JobId
    name: str
    queue: str
    priority: int
    state: JobState
    args: list[Any]
    kwargs: dict[str, Any]
    attempt: int
    max_attempts: int
    run_at: datetime
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    node_id: uuid.UUID | None = None
    unique_key: str | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    reason: str | None = None
    cancel_requested: bool = False
    schedule: str | None = None  # the schedule that fired it, if any
    fire_at: datetime | None = None  # and the fire time it ran for
    workflow_id: uuid.UUID | None = None  # the workflow it is a step of, if any
    step: str | None = None  # and its key there
    wall_s: float | None = None  # the last attempt's run time, as its node measured it
    cpu_s: float | None = None  # and its CPU time (the task's own, or its pool worker's)

    @property
    def is_finished(self) -> bool:
        return self.state.is_terminal

    @property
    def queue_wait_s(self) -> float | None:
        """How long the last attempt waited to start after it was due, in seconds."""
        if self.started_at is None:
            return None
        return max(0.0, (self.started_at - self.run_at).total_seconds())


class _Parents(Protocol):
    async def parent_results(self, job_id: JobId) -> Sequence[Any]: ...


class ContextApp(Protocol):
    """What a running job's context calls on its app (``App`` is one). Narrow on purpose:
    this module, which the stores and the pool import, needs nothing else of the app."""

    @property
    def store(self) -> _Parents: ...

    def _definition(self, job: str | JobDef[Any, Any]) -> JobDef[Any, Any]: ...

    async def _enqueue(
        self,
        definition: JobDef[Any, Any],
        sig: Signature,
        after: Sequence[JobId | str] | None,
        workflow_id: JobId | None,
    ) -> JobId: ...

    async def result(self, job_id: JobId | str, *, timeout: float | None = None) -> Any: ...


class StepRunner(Protocol):
    """What runs a job's steps and durable waits (the node's ``node.steps.JobSteps``)."""

    @property
    def durable(self) -> bool: ...

    async def call(
        self, name: str, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], idempotent: bool
    ) -> Any: ...

    async def sleep(self, delay: timedelta | float) -> None: ...

    async def wait_for(self, job_id: JobId) -> Any: ...


class JobContext:
    """What a running job may know and do. Ask for it by annotating the first parameter::

    @app.job()
    async def provision(ctx: JobContext, vm_id: str) -> None:
        ctx.logger.info("attempt %d", ctx.attempt)
    """

    __slots__ = (
        "_app",
        "_cancel_requested",
        "_logger",
        "_steps",
        "attempt",
        "job_id",
        "job_name",
        "max_attempts",
        "queue",
        "workflow_id",
    )

    def __init__(
        self,
        app: ContextApp | None,
        job_id: JobId,
        name: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        workflow_id: uuid.UUID | None = None,
    ) -> None:
        self._app = app  # None in a pool worker, which has no database access
        self.workflow_id = workflow_id  # the workflow this job is a step of, if any
        self.job_id = job_id
        self.job_name = name
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._cancel_requested = False
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._steps: StepRunner | None = None  # set by the node that runs the job

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job (the job is also cancelled at its next
        ``await``; check this to stop CPU-bound loops that rarely await)."""
        return self._cancel_requested

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """A logger that tags every line with the job's name, id and attempt."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                logging.getLogger(f"asyncjobs.job.{self.job_name}"),
                {"job_id": str(self.job_id), "attempt": self.attempt},
            )
        return self._logger

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
        """Enqueue a follow-up job (same options as ``App.enqueue``).

        With ``after`` (job ids, this job's own included), the new job waits for those jobs
        to succeed; enqueued by a workflow step, it joins that workflow, so the workflow is
        not finished until it is. Not available to isolated jobs (``IsolationError``): a pool
        worker has no database.
        """
        app = self._require_app("enqueue")
        definition = app._definition(job)
        sig = Signature(definition.name, args, kwargs, queue, priority, run_at, delay,
                        unique_key, False, concurrency_key, concurrency_limit)  # fmt: skip
        return await app._enqueue(definition, sig, after, self.workflow_id if after else None)

    async def parent_results(self) -> dict[str, Any]:
        """The results of the jobs this one ran after, in order, keyed by step key (a
        workflow step) or by job id (a job enqueued with ``after=``).

        Not available to isolated jobs (``IsolationError``): a pool worker has no database.
        """
        app = self._require_app("parent_results")
        parents = await app.store.parent_results(self.job_id)
        return {p.step or str(p.id): p.result for p in parents if p.id is not None}

    async def wait_for(self, job_id: JobId, timeout: float | None = None) -> Any:
        """Wait for another job to finish and return its result (as ``App.result``).

        In a durable job (``@app.job(durable=True)``), without a timeout, the job parks: it
        gives back its slot and holds no memory, and runs again (replaying its recorded
        steps) once that job has ended, on any node. With a timeout it waits in place.
        Not available to isolated jobs (``IsolationError``): a pool worker has no database.
        """
        steps = self._steps
        if steps is not None and steps.durable and timeout is None:
            return await steps.wait_for(job_id)
        return await self._require_app("wait_for").result(job_id, timeout=timeout)

    async def step(
        self, name: str, fn: Any, /, *args: Any, idempotent: bool = False, **kwargs: Any
    ) -> Any:
        """Run ``fn(*args, **kwargs)`` as a recorded step, and return its result.

        ``fn`` is a coroutine function, or an isolated job (it then runs in the process
        pool). Its result, as JSON, is stored before this returns; on a later run of the same
        job (a resume after its node died, or after ``ctx.sleep``), a step that completed
        returns its stored result and does not run again. Steps are recorded by name and the
        order of the calls, so a loop of steps works; called with other arguments in a
        replay, a step raises ``StepMismatchError``. A step that raises records its error,
        and the job's retry policy decides what comes next. A step that was running when its
        node died is in doubt: the job ends ``lost``, unless the step is ``idempotent=True``,
        in which case it runs again. Steps of one job run one at a time.
        """
        return await self._require_steps("step").call(name, fn, args, kwargs, idempotent)

    async def sleep(self, delay: timedelta | float) -> None:
        """Sleep ``delay`` (a timedelta or seconds). In a durable job the job parks: it gives
        back its slot and holds no memory, and runs again at the due time on any node, after
        a restart too, replaying its recorded steps. Elsewhere it sleeps in place, like
        ``asyncio.sleep``."""
        await self._require_steps("sleep").sleep(delay)

    def _require_steps(self, what: str) -> StepRunner:
        self._require_app(what)
        if self._steps is None:
            raise IsolationError(
                f"ctx.{what}() of job {self.job_name!r} is only available while the job runs "
                "on a node"
            )
        return self._steps

    def _require_app(self, what: str) -> ContextApp:
        if self._app is None:
            raise IsolationError(
                f"job {self.job_name!r} runs isolated in a pool worker, which has no database "
                f"access, so ctx.{what}() is not available. Return a value instead, and let a "
                "coroutine job (or a workflow) act on it."
            )
        return self._app

    def __repr__(self) -> str:
        return f"<JobContext {self.job_name!r} {self.job_id} attempt={self.attempt}>"


def coerce_job_id(value: JobId | str) -> JobId:
    """Accept a UUID or its text form."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{value!r} is not a job id (expected a UUID)") from None


__all__ = [  # Signature and iter_signatures live in signatures.py, and are named here too
    "PRIORITY_MAX",
    "PRIORITY_MIN",
    "ContextApp",
    "JobContext",
    "JobDef",
    "JobId",
    "JobRecord",
    "JobState",
    "Retry",
    "Signature",
    "StepRunner",
    "coerce_job_id",
    "iter_signatures",
    "wants_context",
]
